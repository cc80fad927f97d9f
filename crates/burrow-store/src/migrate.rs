//! Numbered schema migrations.
//!
//! A store's migrations are a list of SQL scripts; the database's `user_version` is
//! how many have been applied. Opening applies the missing ones in one transaction,
//! so a crash mid-upgrade leaves the old schema intact. Migrations are only ever
//! appended, never edited.

use rusqlite::Connection;

use crate::StoreError;

/// Applies the migrations `conn` hasn't seen yet.
pub fn apply(conn: &mut Connection, migrations: &[&str]) -> Result<(), StoreError> {
    let found: usize =
        conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    if found > migrations.len() {
        return Err(StoreError::TooNew {
            found,
            known: migrations.len(),
        });
    }
    if found == migrations.len() {
        return Ok(());
    }
    let tx = conn.transaction()?;
    for sql in &migrations[found..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", migrations.len() as i64)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_only_new_migrations_and_refuses_newer_files() {
        let mut conn = Connection::open_in_memory().unwrap();
        apply(&mut conn, &["CREATE TABLE a (x);"]).unwrap();
        apply(&mut conn, &["CREATE TABLE a (x);", "CREATE TABLE b (y);"]).unwrap();
        conn.execute("INSERT INTO b VALUES (1)", []).unwrap();
        assert!(matches!(
            apply(&mut conn, &["CREATE TABLE a (x);"]),
            Err(StoreError::TooNew { found: 2, known: 1 })
        ));
    }
}
