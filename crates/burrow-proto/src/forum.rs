//! Forum posts: signed by their author, addressed by the hash of their content,
//! ordered by a hybrid logical clock.
//!
//! A post's id is the BLAKE3 hash of everything it says: author, topic, parent,
//! creation time and text. The author signs the id. A receiver recomputes the id
//! and checks the signature before storing anything, so a post can't be altered
//! on its way, nor forged in someone else's name, nor carry an id it doesn't hash
//! to.
//!
//! Creation times are hybrid logical clock readings ([`Hlc`]): wall-clock
//! milliseconds in the high 48 bits, a counter in the low 16. A reply is always
//! stamped after its parent, whatever the two authors' clocks say, so a thread
//! never sorts a reply before what it answers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::id::{NodeId, SecretKey};
use crate::name::Name;

/// Longest post text, in bytes.
pub const MAX_TEXT: usize = 16 * 1024;
/// The topic posts go to when none is named.
pub const DEFAULT_TOPIC: &str = "forum";
/// How far ahead of our own clock a received timestamp may pull our clock. A peer
/// whose clock is further ahead still has its posts stored, but can't drag
/// everyone's timestamps into the future.
pub const MAX_CLOCK_PULL_MS: u64 = 60_000;
/// Posts stamped further ahead of the receiver's clock than this are refused:
/// no honest clock is a day fast, and a far-future stamp would sort first forever.
pub const MAX_AHEAD_MS: u64 = 24 * 3600 * 1000;

/// A forum topic: 1 to [`Topic::MAX_LEN`] characters of `a-z`, `0-9`, `-`, `_`,
/// starting with a letter (the same rules as names).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Topic(String);

/// Why a string is not a [`Topic`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "a topic has 1 to {} characters of a-z, 0-9, '-' and '_', starting with a letter",
    Topic::MAX_LEN
)]
pub struct TopicError;

impl Topic {
    /// The longest topic.
    pub const MAX_LEN: usize = 32;

    /// The default topic, [`DEFAULT_TOPIC`].
    pub fn default_topic() -> Topic {
        Topic(DEFAULT_TOPIC.into())
    }

    /// The topic as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Topic {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, TopicError> {
        let s = s.to_ascii_lowercase();
        let mut chars = s.chars();
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if ok {
            Ok(Topic(s))
        } else {
            Err(TopicError)
        }
    }
}

// Decoding validates, so a peer can't smuggle an invalid topic past the type.
impl<'de> Deserialize<'de> for Topic {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({})", self.0)
    }
}

/// A post's id: the BLAKE3 hash of its content, shown as 64 hex digits (people
/// use a prefix of 8 or more).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PostId(pub [u8; 32]);

impl PostId {
    /// How many hex digits people see.
    pub const SHORT_LEN: usize = 8;

    /// The first [`Self::SHORT_LEN`] hex digits.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..Self::SHORT_LEN / 2])
    }
}

impl fmt::Display for PostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostId({})", self.short())
    }
}

impl FromStr for PostId {
    type Err = hex::FromHexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b)?;
        Ok(PostId(b))
    }
}

/// A hybrid logical clock reading: Unix milliseconds in the high 48 bits, a
/// counter in the low 16. Readings compare as plain integers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Debug)]
pub struct Hlc(pub u64);

impl Hlc {
    /// The reading for wall-clock `ms` with counter 0.
    pub fn from_ms(ms: u64) -> Hlc {
        Hlc(ms << 16)
    }

    /// The wall-clock part, Unix milliseconds.
    pub fn ms(self) -> u64 {
        self.0 >> 16
    }
}

/// A node's hybrid logical clock: never goes backwards, always ahead of every
/// reading it has observed (within [`MAX_CLOCK_PULL_MS`] of its wall clock).
#[derive(Clone, Copy, Debug, Default)]
pub struct HlcClock {
    last: u64,
}

impl HlcClock {
    /// A reading for an event now (`wall_ms`: our wall clock), after every
    /// reading issued or observed so far.
    pub fn now(&mut self, wall_ms: u64) -> Hlc {
        self.last = self.last.saturating_add(1).max(Hlc::from_ms(wall_ms).0);
        Hlc(self.last)
    }

    /// A reading for a reply to a post stamped `parent`: after both now and the
    /// parent. A parent from far ahead gets a reply stamped just after it, without
    /// pulling this clock along (see [`HlcClock::observe`]).
    pub fn after(&mut self, parent: Hlc, wall_ms: u64) -> Hlc {
        self.observe(parent, wall_ms);
        let now = self.now(wall_ms);
        if now > parent {
            now
        } else {
            Hlc(parent.0.saturating_add(1))
        }
    }

    /// Takes in a reading from elsewhere, so later local readings sort after it;
    /// readings more than [`MAX_CLOCK_PULL_MS`] ahead of `wall_ms` are ignored.
    pub fn observe(&mut self, remote: Hlc, wall_ms: u64) {
        if remote.ms() <= wall_ms.saturating_add(MAX_CLOCK_PULL_MS) {
            self.last = self.last.max(remote.0);
        }
    }
}

/// An Ed25519 signature (carried as two 32-byte halves: serde's array support
/// stops at 32).
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature([[u8; 32]; 2]);

impl Signature {
    fn from_bytes(b: [u8; 64]) -> Self {
        let mut halves = [[0u8; 32]; 2];
        halves[0].copy_from_slice(&b[..32]);
        halves[1].copy_from_slice(&b[32..]);
        Signature(halves)
    }

    fn to_bytes(self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[..32].copy_from_slice(&self.0[0]);
        b[32..].copy_from_slice(&self.0[1]);
        b
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[0][..4]))
    }
}

/// A signed post, as it travels and as it is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    /// The hash of the rest of the content ([`Post::content_id`]).
    pub id: PostId,
    /// Who wrote it.
    pub author: NodeId,
    /// The name the author goes by (their own claim, signed with the rest).
    pub author_name: Name,
    /// Where it was posted.
    pub topic: Topic,
    /// The post it answers, if any.
    pub parent: Option<PostId>,
    /// When it was written (the author's hybrid logical clock).
    pub created: Hlc,
    /// The text: 1 to [`MAX_TEXT`] bytes.
    pub text: String,
    /// The author's signature over the id.
    pub sig: Signature,
}

/// Why a received post is refused. Each counts against the peer that sent it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PostError {
    /// The id is not the hash of the content.
    #[error("its id does not match its content")]
    IdMismatch,
    /// The signature is not the author's.
    #[error("its signature does not verify")]
    BadSignature,
    /// Empty, or longer than [`MAX_TEXT`].
    #[error("its text is empty or longer than {MAX_TEXT} bytes")]
    BadText,
    /// A post can't answer itself.
    #[error("it names itself as its parent")]
    OwnParent,
    /// Stamped more than [`MAX_AHEAD_MS`] ahead of our clock.
    #[error("it is dated more than a day ahead")]
    FromTheFuture,
}

impl PostError {
    /// Whether the sender must have done it on purpose (a forwarder can't check
    /// a clock it doesn't have, so only a post's content counts against it).
    pub fn is_forgery(&self) -> bool {
        !matches!(self, PostError::FromTheFuture)
    }
}

/// What the id hashes, in this order, with a domain label in front.
#[derive(Serialize)]
struct Content<'a> {
    domain: &'static str,
    author: &'a NodeId,
    author_name: &'a Name,
    topic: &'a Topic,
    parent: &'a Option<PostId>,
    created: Hlc,
    text: &'a str,
}

const ID_DOMAIN: &str = "burrow forum post v1";
const SIG_DOMAIN: &[u8] = b"burrow forum signature v1:";

impl Post {
    /// Writes and signs a post.
    pub fn create(
        secret: &SecretKey,
        author_name: Name,
        topic: Topic,
        parent: Option<PostId>,
        created: Hlc,
        text: String,
    ) -> Post {
        let author = secret.public();
        let id = Self::content_id(&author, &author_name, &topic, &parent, created, &text);
        let sig = Signature::from_bytes(secret.sign(&signed_bytes(&id)));
        Post {
            id,
            author,
            author_name,
            topic,
            parent,
            created,
            text,
            sig,
        }
    }

    /// The id the content hashes to.
    pub fn content_id(
        author: &NodeId,
        author_name: &Name,
        topic: &Topic,
        parent: &Option<PostId>,
        created: Hlc,
        text: &str,
    ) -> PostId {
        let content = Content {
            domain: ID_DOMAIN,
            author,
            author_name,
            topic,
            parent,
            created,
            text,
        };
        let bytes = postcard::to_stdvec(&content).expect("serializing to a Vec cannot fail");
        PostId(*blake3::hash(&bytes).as_bytes())
    }

    /// Checks everything a receiver must before storing the post (`wall_ms`:
    /// the receiver's clock).
    pub fn verify(&self, wall_ms: u64) -> Result<(), PostError> {
        if self.created.ms() > wall_ms.saturating_add(MAX_AHEAD_MS) {
            return Err(PostError::FromTheFuture);
        }
        if self.text.is_empty() || self.text.len() > MAX_TEXT {
            return Err(PostError::BadText);
        }
        if self.parent == Some(self.id) {
            return Err(PostError::OwnParent);
        }
        let id = Self::content_id(
            &self.author,
            &self.author_name,
            &self.topic,
            &self.parent,
            self.created,
            &self.text,
        );
        if id != self.id {
            return Err(PostError::IdMismatch);
        }
        if !self
            .author
            .verify(&signed_bytes(&self.id), &self.sig.to_bytes())
        {
            return Err(PostError::BadSignature);
        }
        Ok(())
    }
}

fn signed_bytes(id: &PostId) -> Vec<u8> {
    let mut m = SIG_DOMAIN.to_vec();
    m.extend_from_slice(&id.0);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn key(seed: u64) -> SecretKey {
        SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed))
    }

    fn name(n: &str) -> Name {
        n.parse().unwrap()
    }

    fn post(text: &str) -> Post {
        Post::create(
            &key(1),
            name("alice"),
            Topic::default_topic(),
            None,
            Hlc::from_ms(1_700_000_000_000),
            text.into(),
        )
    }

    #[test]
    fn a_post_verifies_and_any_change_is_caught() {
        let p = post("hello");
        let now = 1_700_000_000_000;
        assert_eq!(p.verify(now), Ok(()));
        assert_eq!(
            p.verify(now - MAX_AHEAD_MS - 1),
            Err(PostError::FromTheFuture)
        );

        let mut edited = p.clone();
        edited.text = "hellO".into();
        assert_eq!(edited.verify(now), Err(PostError::IdMismatch));

        // Re-hashing the edit doesn't help: the signature is over the old id.
        edited.id = Post::content_id(
            &edited.author,
            &edited.author_name,
            &edited.topic,
            &edited.parent,
            edited.created,
            &edited.text,
        );
        assert_eq!(edited.verify(now), Err(PostError::BadSignature));

        // Someone else's post claimed in our name.
        let mut stolen = Post::create(
            &key(2),
            name("mallory"),
            p.topic.clone(),
            None,
            p.created,
            "hi".into(),
        );
        stolen.author = p.author;
        assert_eq!(stolen.verify(now), Err(PostError::IdMismatch));

        let mut empty = p.clone();
        empty.text.clear();
        assert_eq!(empty.verify(now), Err(PostError::BadText));
    }

    #[test]
    fn replies_sort_after_their_parent_whatever_the_clocks_say() {
        // The parent's author runs an hour fast; the replier's clock is behind.
        let parent = Hlc::from_ms(1_700_003_600_000);
        let mut clock = HlcClock::default();
        let reply = clock.after(parent, 1_700_000_000_000);
        assert!(reply > parent);
        // A reply to a post from the far future sorts after it without dragging
        // this clock there, and the end of time doesn't overflow.
        let far = Hlc::from_ms(1_900_000_000_000);
        assert!(clock.after(far, 1_700_000_000_000) > far);
        assert!(clock.now(1_700_000_000_000) < Hlc::from_ms(1_700_100_000_000));
        assert_eq!(clock.after(Hlc(u64::MAX), 0), Hlc(u64::MAX));
        // Observed readings from far ahead don't drag the clock along...
        clock.observe(Hlc::from_ms(1_800_000_000_000), 1_700_000_000_000);
        assert!(clock.now(1_700_000_000_000) < Hlc::from_ms(1_700_100_000_000));
        // ...but near ones do, and readings never repeat.
        let mut c = HlcClock::default();
        c.observe(Hlc::from_ms(1_000_030_000), 1_000_000_000);
        let (a, b) = (c.now(1_000_000_000), c.now(1_000_000_000));
        assert!(a > Hlc::from_ms(1_000_030_000) && b > a);
    }

    #[test]
    fn topics_follow_the_name_rules() {
        assert_eq!("Games".parse::<Topic>().unwrap().as_str(), "games");
        for bad in ["", "1abc", "a b", "../x", &"x".repeat(33)] {
            assert_eq!(bad.parse::<Topic>(), Err(TopicError), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn posts_round_trip_and_verify(text in ".{1,300}", parent in any::<Option<[u8; 32]>>(), t in any::<u64>()) {
            let p = Post::create(&key(3), name("carol"), Topic::default_topic(), parent.map(PostId), Hlc(t), text);
            let bytes = postcard::to_stdvec(&p).unwrap();
            let back: Post = postcard::from_bytes(&bytes).unwrap();
            prop_assert_eq!(back.verify(u64::MAX), Ok(()));
            prop_assert_eq!(back, p);
        }

        #[test]
        fn random_bytes_never_panic_and_never_verify(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            if let Ok(p) = postcard::from_bytes::<Post>(&bytes) {
                prop_assert!(p.verify(u64::MAX).is_err());
            }
        }
    }
}
