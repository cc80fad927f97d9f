//! Windows: the control connection is a named pipe whose security descriptor
//! lets only our user in (and refuses remote clients); the home is a
//! directory whose access list names our user alone, inherited by every file
//! made in it (the key, the stores), which is how Windows keeps files
//! private where Unix uses mode bits.
//!
//! Pipe names are global, not files in the home: the pipe is named after a
//! hash of the home's path, and the node takes it as the first instance, so
//! a name already held (by a node already running, or by anyone else) makes
//! `bind` fail instead of sharing it. A client checks that the process at
//! the other end runs as its own user before it sends anything: someone who
//! took the name first gets no requests (nor passwords, nor a pipe's bytes).

use std::ffi::c_void;
use std::fs;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::windows::named_pipe::{
    ClientOptions, NamedPipeClient, NamedPipeServer, ServerOptions,
};
use windows_sys::Win32::Foundation::{CloseHandle, LocalFree, HANDLE};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::{
    GetTokenInformation, TokenUser, PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES, TOKEN_QUERY,
    TOKEN_USER,
};
use windows_sys::Win32::Storage::FileSystem::CreateDirectoryW;
use windows_sys::Win32::System::Pipes::GetNamedPipeServerProcessId;
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION,
};

/// What a connection is split into.
pub type ReadHalf = tokio::io::ReadHalf<Stream>;
/// What a connection is split into.
pub type WriteHalf = tokio::io::WriteHalf<Stream>;

/// `ERROR_PIPE_BUSY`: every instance of the pipe is taken for now.
const PIPE_BUSY: i32 = 231;

/// The pipe of the node or server in `home`.
pub fn address(home: &Path) -> PathBuf {
    let canonical = fs::canonicalize(home).unwrap_or_else(|_| home.to_path_buf());
    let key = canonical.to_string_lossy().to_lowercase();
    let hash = blake3::hash(key.as_bytes()).to_hex();
    PathBuf::from(format!(r"\\.\pipe\burrow-{}", &hash[..24]))
}

/// The listening end: the instance the next client will take.
pub struct Listener {
    name: PathBuf,
    next: NamedPipeServer,
}

/// One control connection, from either end.
pub enum Stream {
    /// The node's or server's end.
    Server(NamedPipeServer),
    /// The CLI's end.
    Client(NamedPipeClient),
}

/// Creates the pipe for `home`, open to our user only; refuses when the name
/// is held already.
pub fn bind(home: &Path) -> io::Result<Listener> {
    let name = address(home);
    let in_use = || {
        io::Error::new(
            io::ErrorKind::AddrInUse,
            "something is already running there",
        )
    };
    // A live pipe answers (or is busy answering), as a live Unix socket
    // does; the first-instance flag below refuses one too where the system
    // honours it (Wine doesn't).
    match ClientOptions::new().open(&name) {
        Ok(_) => return Err(in_use()),
        Err(e) if e.raw_os_error() == Some(PIPE_BUSY) => return Err(in_use()),
        Err(_) => {}
    }
    let next = instance(&name, true).map_err(|e| {
        if e.kind() == io::ErrorKind::PermissionDenied {
            in_use()
        } else {
            e
        }
    })?;
    Ok(Listener { name, next })
}

/// One instance of the pipe, with a security descriptor naming our user alone.
fn instance(name: &Path, first: bool) -> io::Result<NamedPipeServer> {
    let descriptor = Descriptor::new(&format!("D:P(A;;GA;;;{})", user_sid()?))?;
    let mut attributes = descriptor.attributes(false);
    let mut options = ServerOptions::new();
    options
        .first_pipe_instance(first)
        .reject_remote_clients(true);
    // SAFETY: `attributes` points at a live SECURITY_ATTRIBUTES whose
    // descriptor outlives the call.
    unsafe {
        options.create_with_security_attributes_raw(
            name,
            &mut attributes as *mut SECURITY_ATTRIBUTES as *mut c_void,
        )
    }
}

impl Listener {
    /// The next connection. The pipe's descriptor already keeps other users
    /// out. An instance whose client came and went before it was connected
    /// is replaced, not retried.
    pub async fn accept(&mut self) -> io::Result<Stream> {
        let connected = self.next.connect().await;
        let next = instance(&self.name, false)?;
        let this = std::mem::replace(&mut self.next, next);
        connected.map(|()| Stream::Server(this))
    }
}

/// Connects to the pipe of `home`, waiting a little while every instance is
/// busy (a client that just connected, before the next instance is made).
pub async fn connect(home: &Path) -> io::Result<Stream> {
    let name = address(home);
    let mut tries = 0;
    loop {
        match ClientOptions::new().open(&name) {
            Ok(client) => {
                check_server(&client)?;
                return Ok(Stream::Client(client));
            }
            Err(e) if e.raw_os_error() == Some(PIPE_BUSY) && tries < 100 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

impl Stream {
    /// Its two directions, each to a task of its own.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        tokio::io::split(self)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Server(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Client(c) => Pin::new(c).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Server(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Client(c) => Pin::new(c).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Server(s) => Pin::new(s).poll_flush(cx),
            Stream::Client(c) => Pin::new(c).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Server(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Client(c) => Pin::new(c).poll_shutdown(cx),
        }
    }
}

/// Nothing to remove: the pipe goes when its last handle closes.
pub fn unlink(_home: &Path) {}

/// Creates `dir` (and its parents); `dir` itself gets an access list that
/// names our user alone, protected from what its parent would pass down.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    let descriptor = Descriptor::new(&format!("D:P(A;OICI;FA;;;{})", user_sid()?))?;
    let attributes = descriptor.attributes(false);
    let wide: Vec<u16> = dir.as_os_str().encode_wide().chain([0]).collect();
    // SAFETY: `wide` is a NUL-terminated path and `attributes` a live
    // SECURITY_ATTRIBUTES whose descriptor outlives the call.
    if unsafe { CreateDirectoryW(wide.as_ptr(), &attributes) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An existing home is trusted as it is: under `%APPDATA%` it is the user's
/// own, and one burrow made has our user alone in its access list.
pub fn check_private_dir(_dir: &Path, _meta: &fs::Metadata) -> io::Result<()> {
    Ok(())
}

/// Files inherit the home's access list: nothing to add.
pub fn owner_only(options: &mut fs::OpenOptions) -> &mut fs::OpenOptions {
    options
}

/// Files in a home burrow made are its user's alone (inherited): no mode to
/// check.
pub fn open_to_others(_meta: &fs::Metadata) -> Option<&'static str> {
    None
}

/// Nothing to narrow: the file has the home's access list.
pub fn restrict(_path: &Path) -> io::Result<()> {
    Ok(())
}

/// A security descriptor made from SDDL text, freed when dropped.
struct Descriptor(PSECURITY_DESCRIPTOR);

impl Descriptor {
    fn new(sddl: &str) -> io::Result<Self> {
        let wide: Vec<u16> = sddl.encode_utf16().chain([0]).collect();
        let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: `wide` is NUL-terminated; on success `sd` is a descriptor
        // we own and free with LocalFree.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                wide.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Descriptor(sd))
    }

    fn attributes(&self, inherit: bool) -> SECURITY_ATTRIBUTES {
        SECURITY_ATTRIBUTES {
            nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: self.0,
            bInheritHandle: inherit.into(),
        }
    }
}

impl Drop for Descriptor {
    fn drop(&mut self) {
        // SAFETY: the descriptor came from
        // ConvertStringSecurityDescriptorToSecurityDescriptorW.
        unsafe { LocalFree(self.0 as _) };
    }
}

/// Refuses a pipe whose server runs as another user than ours.
fn check_server(client: &NamedPipeClient) -> io::Result<()> {
    use std::os::windows::io::AsRawHandle;
    let mut pid = 0u32;
    // SAFETY: a live pipe handle and a live u32 to write to.
    if unsafe { GetNamedPipeServerProcessId(client.as_raw_handle() as HANDLE, &mut pid) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: OpenProcess takes no pointers; the handle is closed below.
    let process = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if process.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `process` is a live process handle, closed once read.
    let theirs = unsafe { process_user_sid(process) };
    // SAFETY: as above.
    unsafe { CloseHandle(process) };
    if theirs? != user_sid()? {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the control pipe is held by another user's process (pid {pid}); not talking to it"
            ),
        ));
    }
    Ok(())
}

/// Our user's SID as text (`S-1-5-21-…`), from the process token.
fn user_sid() -> io::Result<String> {
    // SAFETY: the current process's pseudo-handle is always valid.
    unsafe { process_user_sid(GetCurrentProcess()) }
}

/// The SID of the user `process` runs as, as text.
///
/// # Safety
/// `process` must be a live process handle with query access.
unsafe fn process_user_sid(process: HANDLE) -> io::Result<String> {
    // SAFETY: each call gets live buffers of the sizes given; the token is
    // closed and the string freed before returning.
    unsafe {
        let mut token: HANDLE = std::ptr::null_mut();
        if OpenProcessToken(process, TOKEN_QUERY, &mut token) == 0 {
            return Err(io::Error::last_os_error());
        }
        // TOKEN_USER and the SID it points into: well under 256 bytes.
        let mut buf = [0u64; 64];
        let mut len = 0u32;
        let got = GetTokenInformation(
            token,
            TokenUser,
            buf.as_mut_ptr() as *mut c_void,
            std::mem::size_of_val(&buf) as u32,
            &mut len,
        );
        let err = io::Error::last_os_error();
        CloseHandle(token);
        if got == 0 {
            return Err(err);
        }
        let user = &*(buf.as_ptr() as *const TOKEN_USER);
        let mut text: *mut u16 = std::ptr::null_mut();
        if ConvertSidToStringSidW(user.User.Sid, &mut text) == 0 {
            return Err(io::Error::last_os_error());
        }
        let len = (0..).take_while(|&i| *text.add(i) != 0).count();
        let sid = String::from_utf16_lossy(std::slice::from_raw_parts(text, len));
        LocalFree(text as _);
        Ok(sid)
    }
}
