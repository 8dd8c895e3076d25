//! The durable store's promises: gapless seqs, idempotent sends, isolation of bad requests
//! within a group commit, paging, and durability across reopen and `kill -9`.

use std::path::Path;
use std::sync::Mutex;

use heartline_runtime::store::{
    AppendOutcome, AppendRequest, Member, Store, StoreError, StoreLock, StoredMessage, MAX_PAGE,
};

/// Held while this binary starts a process, and by a test that expects a lock to be free:
/// a child holds a copy of every descriptor of ours until it has started its program, the
/// locks' among them, and a lock is let go only once every copy is closed.
static SPAWNING: Mutex<()> = Mutex::new(());

fn members() -> Vec<Member> {
    vec![Member::new("u1", "customer"), Member::new("a1", "agent")]
}

fn req(id: &str, conversation: &str, sender: &str, temp_id: Option<&str>) -> AppendRequest {
    AppendRequest {
        id: id.to_owned(),
        conversation_id: conversation.to_owned(),
        sender_id: sender.to_owned(),
        sender_type: "customer".to_owned(),
        content: format!("content of {id}"),
        temp_id: temp_id.map(str::to_owned),
        created_at_ms: 1_700_000_000_000,
    }
}

fn stored(result: &Result<AppendOutcome, StoreError>) -> &StoredMessage {
    match result {
        Ok(AppendOutcome::Stored(m)) => m,
        other => panic!("expected Stored, got {other:?}"),
    }
}

fn duplicate(result: &Result<AppendOutcome, StoreError>) -> &StoredMessage {
    match result {
        Ok(AppendOutcome::Duplicate(m)) => m,
        other => panic!("expected Duplicate, got {other:?}"),
    }
}

/// Every message of a conversation, page by page.
fn all_messages(store: &Store, conversation: &str) -> Vec<StoredMessage> {
    let mut out: Vec<StoredMessage> = Vec::new();
    loop {
        let after = out.last().map(|m| m.seq).unwrap_or(0);
        let page = store
            .messages(conversation, Some(after), None, MAX_PAGE)
            .expect("page");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

fn seqs(messages: &[StoredMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

fn open(path: &Path) -> Store {
    Store::open(path).expect("open store")
}

#[test]
fn seq_is_gapless_per_conversation_across_batches_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("heartline.db");
    {
        let mut store = open(&path);
        store.put_conversation("c1", &members()).expect("c1");
        store.put_conversation("c2", &members()).expect("c2");
        let results = store.append_batch(&[
            req("m1", "c1", "u1", None),
            req("m2", "c2", "u1", None),
            req("m3", "c1", "u1", None),
        ]);
        assert_eq!(
            results.iter().map(|r| stored(r).seq).collect::<Vec<_>>(),
            vec![1, 1, 2]
        );
        let results = store.append_batch(&[req("m4", "c1", "u1", None)]);
        assert_eq!(stored(&results[0]).seq, 3);
    }
    let mut store = open(&path);
    let results = store.append_batch(&[req("m5", "c1", "u1", None), req("m6", "c2", "u1", None)]);
    assert_eq!(stored(&results[0]).seq, 4);
    assert_eq!(stored(&results[1]).seq, 2);
    assert_eq!(seqs(&all_messages(&store, "c1")), vec![1, 2, 3, 4]);
    assert_eq!(seqs(&all_messages(&store, "c2")), vec![1, 2]);
}

#[test]
fn a_member_listed_twice_is_kept_once_at_its_first_position() {
    let mut store = Store::open_in_memory().expect("store");
    let (a, b, c) = (
        Member::new("a", "agent"),
        Member::new("b", "customer"),
        Member::new("a", "customer"),
    );
    let listed = [b.clone(), a.clone(), b.clone(), c.clone(), a.clone()];
    let conv = store.put_conversation("c", &listed).expect("put");
    assert_eq!(conv.members, vec![b, a, c]);
    // Many members, most listed twice: kept once each, in order.
    let many: Vec<Member> = (0..20_000)
        .map(|i| Member::new(format!("u{}", i % 10_000), "customer"))
        .collect();
    let conv = store.put_conversation("big", &many).expect("put");
    assert_eq!(conv.members, many[..10_000].to_vec());
}

#[test]
fn reopen_after_drop_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("heartline.db");
    let written: Vec<StoredMessage>;
    {
        let mut store = open(&path);
        store.put_conversation("c1", &members()).expect("c1");
        store
            .put_conversation("c0", &[Member::new("x", "agent")])
            .expect("c0");
        let mut r = req("m1", "c1", "u1", Some("t1"));
        r.content = "héllo \u{1F600}\nline two \0 with a NUL".to_owned();
        r.created_at_ms = 42;
        let results = store.append_batch(&[r, req("m2", "c1", "a1", None)]);
        written = results.iter().map(|r| stored(r).clone()).collect();
    }
    let store = open(&path);
    assert_eq!(all_messages(&store, "c1"), written);
    assert_eq!(
        written[0].content,
        "héllo \u{1F600}\nline two \0 with a NUL"
    );
    assert_eq!(written[0].created_at_ms, 42);
    let conversations = store.conversations().expect("conversations");
    let summary: Vec<(&str, usize, u64)> = conversations
        .iter()
        .map(|(c, last)| (c.id.as_str(), c.members.len(), *last))
        .collect();
    assert_eq!(summary, vec![("c0", 1, 0), ("c1", 2, 2)]);
    assert_eq!(
        store.conversation("c1").expect("lookup"),
        Some(heartline_runtime::store::Conversation {
            id: "c1".to_owned(),
            members: members(),
        })
    );
    assert_eq!(store.conversation("nope").expect("lookup"), None);
}

#[test]
fn temp_id_is_idempotent_across_batches() {
    let mut store = Store::open_in_memory().expect("store");
    store.put_conversation("c1", &members()).expect("c1");
    let first = store.append_batch(&[req("m1", "c1", "u1", Some("t1"))]);
    let original = stored(&first[0]).clone();

    let mut retry = req("m2", "c1", "u1", Some("t1"));
    retry.content = "a different body is ignored".to_owned();
    let second = store.append_batch(&[retry]);
    assert_eq!(duplicate(&second[0]), &original);

    assert_eq!(seqs(&all_messages(&store, "c1")), vec![1]);
    let third = store.append_batch(&[req("m3", "c1", "u1", Some("t2"))]);
    assert_eq!(stored(&third[0]).seq, 2, "a duplicate consumes no seq");
    assert_eq!(
        store.find_by_temp_id("u1", "customer", "t1").expect("find"),
        Some(original)
    );
    assert_eq!(
        store
            .find_by_temp_id("u1", "customer", "nope")
            .expect("find"),
        None
    );
}

#[test]
fn temp_id_is_idempotent_within_one_batch() {
    let mut store = Store::open_in_memory().expect("store");
    store.put_conversation("c1", &members()).expect("c1");
    let results = store.append_batch(&[
        req("m1", "c1", "u1", Some("t1")),
        req("m2", "c1", "u1", Some("t1")),
        req("m3", "c1", "u1", Some("t2")),
        req("m4", "c1", "u1", Some("t1")),
    ]);
    let first = stored(&results[0]).clone();
    assert_eq!(duplicate(&results[1]), &first);
    assert_eq!(stored(&results[2]).seq, 2);
    assert_eq!(duplicate(&results[3]), &first);
    assert_eq!(seqs(&all_messages(&store, "c1")), vec![1, 2]);
}

#[test]
fn temp_id_is_idempotent_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("heartline.db");
    let original = {
        let mut store = open(&path);
        store.put_conversation("c1", &members()).expect("c1");
        let results = store.append_batch(&[req("m1", "c1", "u1", Some("t1"))]);
        stored(&results[0]).clone()
    };
    let mut store = open(&path);
    let results = store.append_batch(&[req("m9", "c1", "u1", Some("t1"))]);
    assert_eq!(duplicate(&results[0]), &original);
    assert_eq!(all_messages(&store, "c1"), vec![original]);
}

#[test]
fn temp_ids_are_scoped_per_sender_and_absent_ones_never_collide() {
    let mut store = Store::open_in_memory().expect("store");
    store.put_conversation("c1", &members()).expect("c1");
    let mut agent = req("m3", "c1", "u1", Some("t1"));
    agent.sender_type = "agent".to_owned();
    let results = store.append_batch(&[
        req("m1", "c1", "u1", Some("t1")),
        req("m2", "c1", "a1", Some("t1")),
        agent,
        req("m4", "c1", "u1", None),
        req("m5", "c1", "u1", None),
    ]);
    assert_eq!(
        results.iter().map(|r| stored(r).seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
}

#[test]
fn a_used_temp_id_is_a_duplicate_even_in_another_conversation() {
    let mut store = Store::open_in_memory().expect("store");
    store.put_conversation("c1", &members()).expect("c1");
    store.put_conversation("c2", &members()).expect("c2");
    let results = store.append_batch(&[
        req("m1", "c1", "u1", Some("t1")),
        req("m2", "c2", "u1", Some("t1")),
    ]);
    let first = stored(&results[0]).clone();
    assert_eq!(duplicate(&results[1]), &first);
    assert!(all_messages(&store, "c2").is_empty());
}

#[test]
fn bad_requests_fail_alone_within_a_batch() {
    let mut store = Store::open_in_memory().expect("store");
    store.put_conversation("c1", &members()).expect("c1");
    let mut far_future = req("m5", "c1", "u1", None);
    far_future.created_at_ms = u64::MAX;
    let results = store.append_batch(&[
        req("m1", "c1", "u1", None),
        req("m2", "ghost", "u1", Some("t-ghost")),
        req("m1", "c1", "u1", None),
        req("m3", "c1", "u1", None),
        far_future,
        req("m4", "ghost", "u1", None),
    ]);
    assert_eq!(stored(&results[0]).seq, 1);
    assert!(
        matches!(&results[1], Err(StoreError::UnknownConversation(c)) if c == "ghost"),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(&results[2], Err(StoreError::DuplicateMessageId(id)) if id == "m1"),
        "{:?}",
        results[2]
    );
    assert_eq!(stored(&results[3]).seq, 2, "failed requests consume no seq");
    assert!(
        matches!(
            &results[4],
            Err(StoreError::OutOfRange {
                field: "created_at_ms",
                ..
            })
        ),
        "{:?}",
        results[4]
    );
    assert!(matches!(
        &results[5],
        Err(StoreError::UnknownConversation(_))
    ));
    assert_eq!(seqs(&all_messages(&store, "c1")), vec![1, 2]);
    assert_eq!(
        store
            .find_by_temp_id("u1", "customer", "t-ghost")
            .expect("find"),
        None,
        "a failed request's temp id stays free"
    );
}

#[test]
fn a_failed_transaction_fails_every_request_and_stores_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("heartline.db");
    let mut store = open(&path);
    store.put_conversation("c1", &members()).expect("c1");
    store
        .set_busy_timeout(std::time::Duration::ZERO)
        .expect("busy timeout");

    // Another process holding the write lock makes the transaction itself fail.
    let other = rusqlite::Connection::open(&path).expect("second connection");
    other.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let results = store.append_batch(&[
        req("m1", "c1", "u1", Some("t1")),
        req("m2", "c1", "u1", None),
    ]);
    assert_eq!(results.len(), 2);
    for result in &results {
        assert!(matches!(result, Err(StoreError::Sqlite(_))), "{result:?}");
    }
    other.execute_batch("ROLLBACK").expect("unlock");

    assert!(all_messages(&store, "c1").is_empty());
    let results = store.append_batch(&[req("m1", "c1", "u1", Some("t1"))]);
    assert_eq!(
        stored(&results[0]).seq,
        1,
        "the failed batch consumed no seq"
    );
}

#[test]
fn empty_batch_is_a_no_op() {
    let mut store = Store::open_in_memory().expect("store");
    assert!(store.append_batch(&[]).is_empty());
}

#[test]
fn put_conversation_replaces_members_and_keeps_messages() {
    let mut store = Store::open_in_memory().expect("store");
    let created = store.put_conversation("c1", &members()).expect("create");
    assert_eq!(created.members, members());
    store.append_batch(&[req("m1", "c1", "u1", None)]);

    let replacement = vec![
        Member::new("z9", "agent"),
        Member::new("u1", "customer"),
        Member::new("z9", "agent"),
        Member::new("u1", "agent"),
    ];
    let replaced = store.put_conversation("c1", &replacement).expect("replace");
    let expected = vec![
        Member::new("z9", "agent"),
        Member::new("u1", "customer"),
        Member::new("u1", "agent"),
    ];
    assert_eq!(replaced.members, expected, "order kept, repeats dropped");
    let loaded = store.conversation("c1").expect("lookup").expect("exists");
    assert_eq!(loaded, replaced);
    assert!(loaded.has_member("u1", "agent"));
    assert!(!loaded.has_member("a1", "agent"));

    let emptied = store.put_conversation("c1", &[]).expect("empty");
    assert!(emptied.members.is_empty());
    assert_eq!(seqs(&all_messages(&store, "c1")), vec![1]);
    let results = store.append_batch(&[req("m2", "c1", "u1", None)]);
    assert_eq!(stored(&results[0]).seq, 2);
    // The write and the last seq in one transaction.
    let (again, last_seq) = store
        .put_conversation_with_last_seq("c1", &members())
        .expect("put");
    assert_eq!((again.members, last_seq), (members(), 2));
    let (_, fresh) = store
        .put_conversation_with_last_seq("c2", &members())
        .expect("put");
    assert_eq!(fresh, 0);
}

#[test]
fn conversations_lists_everything_in_id_order() {
    let mut store = Store::open_in_memory().expect("store");
    for id in ["b", "a", "c", "B"] {
        store.put_conversation(id, &members()).expect("put");
    }
    store.append_batch(&[req("m1", "c", "u1", None), req("m2", "c", "u1", None)]);
    let listed: Vec<(String, u64)> = store
        .conversations()
        .expect("list")
        .into_iter()
        .map(|(c, last)| (c.id, last))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("B".to_owned(), 0),
            ("a".to_owned(), 0),
            ("b".to_owned(), 0),
            ("c".to_owned(), 2)
        ]
    );
}

#[test]
fn paging_after_before_and_limit() {
    let mut store = Store::open_in_memory().expect("store");
    store.put_conversation("c1", &members()).expect("c1");
    store.put_conversation("other", &members()).expect("other");
    let reqs: Vec<AppendRequest> = (1..=20)
        .map(|i| req(&format!("m{i}"), "c1", "u1", None))
        .collect();
    store.append_batch(&reqs);
    store.append_batch(&[req("x1", "other", "u1", None)]);

    let page = |after: Option<u64>, before: Option<u64>, limit: usize| {
        seqs(&store.messages("c1", after, before, limit).expect("page"))
    };
    assert_eq!(
        page(None, None, 3),
        vec![18, 19, 20],
        "no cursor: the latest"
    );
    assert_eq!(page(Some(0), None, 3), vec![1, 2, 3]);
    assert_eq!(page(Some(5), None, 3), vec![6, 7, 8]);
    assert_eq!(page(Some(18), None, 10), vec![19, 20]);
    assert_eq!(page(Some(20), None, 10), Vec::<u64>::new());
    assert_eq!(
        page(None, Some(10), 3),
        vec![7, 8, 9],
        "last page before 10"
    );
    assert_eq!(page(None, Some(3), 10), vec![1, 2]);
    assert_eq!(page(None, Some(1), 10), Vec::<u64>::new());
    assert_eq!(page(None, Some(0), 10), Vec::<u64>::new());
    assert_eq!(
        page(Some(5), Some(10), 2),
        vec![6, 7],
        "first page of the range"
    );
    assert_eq!(page(Some(5), Some(10), 100), vec![6, 7, 8, 9]);
    assert_eq!(page(Some(10), Some(5), 100), Vec::<u64>::new());
    assert_eq!(page(None, None, 0), Vec::<u64>::new());
    assert_eq!(page(Some(u64::MAX), None, 10), Vec::<u64>::new());
    assert_eq!(page(None, Some(u64::MAX), 2), vec![19, 20]);
    assert_eq!(page(Some(17), Some(u64::MAX), 10), vec![18, 19, 20]);
    assert_eq!(page(None, None, usize::MAX).len(), 20);
    assert!(store
        .messages("c1", None, None, 5)
        .expect("page")
        .iter()
        .all(|m| m.conversation_id == "c1"));
}

/// A page bounded by its content's bytes ends before the message that would take it
/// past the bound, counted from where it is read (its start reading forward, its end
/// otherwise), and always holds one message.
#[test]
fn a_page_stops_at_its_bytes_of_content() {
    let mut store = Store::open_in_memory().expect("store");
    store.put_conversation("c1", &members()).expect("c1");
    // Each content is "content of mN": 13 bytes for m1..m9, 14 for m10..m20.
    let reqs: Vec<AppendRequest> = (1..=20)
        .map(|i| req(&format!("m{i}"), "c1", "u1", None))
        .collect();
    store.append_batch(&reqs);
    let page = |after: Option<u64>, before: Option<u64>, bytes: usize| {
        seqs(
            &store
                .messages_within("c1", after, before, 100, bytes)
                .expect("page"),
        )
    };
    assert_eq!(page(Some(0), None, 39), vec![1, 2, 3], "three of 13 fit");
    assert_eq!(page(Some(0), None, 38), vec![1, 2]);
    assert_eq!(page(Some(0), None, 0), vec![1], "always one");
    assert_eq!(page(None, None, 42), vec![18, 19, 20], "from the end");
    assert_eq!(page(None, None, 41), vec![19, 20]);
    assert_eq!(page(None, Some(3), 1), vec![2]);
    assert_eq!(page(Some(5), Some(9), usize::MAX), vec![6, 7, 8]);
    assert_eq!(page(Some(20), None, 0), Vec::<u64>::new());
}

#[test]
fn page_size_is_capped() {
    let mut store = Store::open_in_memory().expect("store");
    store.put_conversation("c1", &members()).expect("c1");
    let reqs: Vec<AppendRequest> = (0..MAX_PAGE + 5)
        .map(|i| req(&format!("m{i}"), "c1", "u1", None))
        .collect();
    assert!(store.append_batch(&reqs).iter().all(|r| r.is_ok()));
    let first = store
        .messages("c1", Some(0), None, usize::MAX)
        .expect("page");
    assert_eq!(first.len(), MAX_PAGE);
    assert_eq!(first.first().map(|m| m.seq), Some(1));
    let last = store
        .messages("c1", None, Some(u64::MAX), MAX_PAGE * 2)
        .expect("page");
    assert_eq!(last.len(), MAX_PAGE);
    assert_eq!(last.last().map(|m| m.seq), Some((MAX_PAGE + 5) as u64));
}

#[test]
fn messages_of_an_unknown_conversation_is_an_error() {
    let store = Store::open_in_memory().expect("store");
    assert!(matches!(
        store.messages("ghost", None, None, 10),
        Err(StoreError::UnknownConversation(c)) if c == "ghost"
    ));
}

#[test]
fn odd_strings_are_stored_verbatim() {
    let mut store = Store::open_in_memory().expect("store");
    let odd = [
        "",
        "'; DROP TABLE messages; --",
        "\0",
        "%_\\",
        "\u{FFFF}\u{10FFFF}",
    ];
    for (i, text) in odd.iter().enumerate() {
        let id = format!("{text}{i}");
        store
            .put_conversation(&id, &[Member::new(*text, *text)])
            .expect("put");
        let r = AppendRequest {
            id: id.clone(),
            conversation_id: id.clone(),
            sender_id: text.to_string(),
            sender_type: text.to_string(),
            content: text.to_string(),
            temp_id: Some(text.to_string()),
            created_at_ms: 0,
        };
        let results = store.append_batch(std::slice::from_ref(&r));
        let m = stored(&results[0]);
        assert_eq!(
            (m.seq, m.content.as_str(), m.temp_id.as_deref()),
            (1, *text, Some(*text))
        );
        assert_eq!(
            store
                .find_by_temp_id(text, text, text)
                .expect("find")
                .as_ref(),
            Some(m)
        );
    }
    assert_eq!(store.conversations().expect("list").len(), odd.len());
}

#[test]
fn a_file_that_is_not_a_database_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("heartline.db");
    std::fs::write(&path, vec![0x5a_u8; 8192]).expect("write");
    assert!(Store::open(&path).is_err());
}

#[test]
fn a_foreign_database_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("other.db");
    let conn = rusqlite::Connection::open(&path).expect("sqlite");
    conn.execute_batch("CREATE TABLE accounts (id INTEGER PRIMARY KEY);")
        .expect("create");
    drop(conn);
    assert!(matches!(Store::open(&path), Err(StoreError::Corrupt(_))));
    // Left as it was found: still in its own journal mode, no log beside it.
    let conn = rusqlite::Connection::open(&path).expect("sqlite");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .expect("mode");
    assert_eq!(mode, "delete");
    assert!(!dir.path().join("other.db-wal").exists());
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("heartline.db");
    drop(open(&path));
    let conn = rusqlite::Connection::open(&path).expect("sqlite");
    conn.execute("UPDATE schema_version SET version = version + 1", [])
        .expect("bump");
    drop(conn);
    assert!(matches!(
        Store::open(&path),
        Err(StoreError::SchemaTooNew { .. })
    ));
}

#[test]
fn one_holder_at_a_time_has_a_stores_lock() {
    let _no_child = SPAWNING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("heartline.db");
    let first = StoreLock::acquire(&path).expect("first");
    assert!(matches!(
        StoreLock::acquire(&path),
        Err(StoreError::InUse(_))
    ));
    // Through a hard link made after the first holder started on a new database: the
    // link has a lock file of its own, not the database file.
    let hard = dir.path().join("hard.db");
    std::fs::hard_link(&path, &hard).expect("hard link");
    assert!(matches!(
        StoreLock::acquire(&hard),
        Err(StoreError::InUse(_))
    ));
    std::fs::remove_file(&hard).expect("unlink");
    // Through another name of the same file, once it exists.
    drop(Store::open(&path).expect("store"));
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&path, &link).expect("symlink");
    assert!(matches!(
        StoreLock::acquire(&link),
        Err(StoreError::InUse(_))
    ));
    drop(first);
    let mut store = Store::open(&path).expect("store");
    store.keep_lock(StoreLock::acquire(&link).expect("free again"));
    assert!(matches!(
        StoreLock::acquire(&path),
        Err(StoreError::InUse(_))
    ));
    drop(store);
    StoreLock::acquire(&path).expect("let go with the store");
}

#[test]
fn a_missing_directory_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("no").join("such").join("heartline.db");
    assert!(matches!(Store::open(&path), Err(StoreError::Sqlite(_))));
}

/// `kill -9` in the middle of a stream of group commits loses nothing that was reported
/// committed, leaves no gap, and stores nothing twice. The writer is this test binary run
/// again as the ignored helper below.
#[cfg(unix)]
mod killed_writer {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::process::ExitStatusExt;
    use std::path::Path;
    use std::process::{Command, Stdio};

    use super::*;

    const DB_ENV: &str = "HEARTLINE_TEST_KILLED_WRITER_DB";
    const ROUND_ENV: &str = "HEARTLINE_TEST_KILLED_WRITER_ROUND";
    const LINE_PREFIX: &str = "HEARTLINE-COMMITTED";
    const CONVERSATION: &str = "crash";
    const BATCH: usize = 4;

    /// The writer: appends batches forever (bounded, should the parent vanish) and reports
    /// each request once `append_batch` has returned.
    #[test]
    #[ignore = "helper process for loses_no_committed_message, does nothing on its own"]
    fn writer_process() {
        let Some(path) = std::env::var_os(DB_ENV) else {
            return;
        };
        let round = std::env::var(ROUND_ENV).unwrap_or_default();
        let mut store = Store::open(Path::new(&path)).expect("writer opens the store");
        if store.conversation(CONVERSATION).expect("lookup").is_none() {
            store
                .put_conversation(CONVERSATION, &super::members())
                .expect("create conversation");
        }
        let mut out = std::io::stdout().lock();
        for batch in 0..100_000 {
            let reqs: Vec<AppendRequest> = (0..BATCH)
                .map(|i| {
                    let name = format!("r{round}-b{batch}-{i}");
                    super::req(&name, CONVERSATION, "u1", Some(&name))
                })
                .collect();
            let mut report = String::new();
            for result in store.append_batch(&reqs) {
                let message = result
                    .expect("append")
                    .into_message()
                    .expect("no member check asked: stored or its duplicate");
                let temp_id = message.temp_id.unwrap_or_default();
                report.push_str(&format!("{LINE_PREFIX} {temp_id} {}\n", message.seq));
            }
            // One small write per batch, so a kill cannot tear a report in the middle.
            out.write_all(report.as_bytes()).expect("report");
            out.flush().expect("flush");
        }
    }

    /// Runs one writer, kills it with SIGKILL after `kill_after` reported appends, and
    /// returns every (temp id, seq) it reported.
    fn run_writer_until_killed(db: &Path, round: usize, kill_after: usize) -> Vec<(String, u64)> {
        let exe = std::env::current_exe().expect("test binary");
        // `spawn` returns once the child runs the program, its copies of our descriptors
        // closed.
        let spawning = super::SPAWNING.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = Command::new(exe)
            .args([
                "killed_writer::writer_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DB_ENV, db)
            .env(ROUND_ENV, round.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn writer");
        drop(spawning);
        let stdout = child.stdout.take().expect("piped stdout");
        let mut reported = Vec::new();
        let mut killed = false;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read writer output");
            // The test harness may print its own text on the same line before ours.
            let Some(start) = line.find(LINE_PREFIX) else {
                continue;
            };
            let mut fields = line[start + LINE_PREFIX.len()..].split_whitespace();
            let (Some(temp_id), Some(Ok(seq))) = (fields.next(), fields.next().map(str::parse))
            else {
                // A report torn by the kill was never completely made.
                continue;
            };
            reported.push((temp_id.to_owned(), seq));
            if !killed && reported.len() >= kill_after {
                child.kill().expect("SIGKILL the writer");
                killed = true;
            }
        }
        let status = child.wait().expect("reap writer");
        assert!(
            killed,
            "writer ended by itself ({status:?}) before being killed"
        );
        assert_eq!(status.signal(), Some(9), "writer must die of SIGKILL");
        reported
    }

    #[test]
    fn loses_no_committed_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("heartline.db");
        let mut reported: Vec<(String, u64)> = Vec::new();
        // Odd kill points so the kill lands at different places within a batch's cycle.
        for (round, kill_after) in [(1_usize, 41), (2, 97), (3, 63)] {
            reported.extend(run_writer_until_killed(&db, round, kill_after));

            let mut store = Store::open(&db).expect("reopen after SIGKILL");
            let messages = super::all_messages(&store, CONVERSATION);
            let expected_seqs: Vec<u64> = (1..=messages.len() as u64).collect();
            assert_eq!(
                super::seqs(&messages),
                expected_seqs,
                "gapless after round {round}"
            );

            let by_temp_id: HashMap<&str, u64> = messages
                .iter()
                .map(|m| (m.temp_id.as_deref().unwrap_or(""), m.seq))
                .collect();
            assert_eq!(by_temp_id.len(), messages.len(), "no temp id stored twice");
            for (temp_id, seq) in &reported {
                assert_eq!(
                    by_temp_id.get(temp_id.as_str()),
                    Some(seq),
                    "reported commit {temp_id} (seq {seq}) must survive"
                );
            }
            // At most the one batch in flight at each kill may be stored without a report.
            assert!(
                messages.len() <= reported.len() + BATCH * round,
                "{} stored, {} reported",
                messages.len(),
                reported.len()
            );

            // A client retrying everything it was acknowledged gets duplicates only.
            let retries: Vec<AppendRequest> = reported
                .iter()
                .map(|(temp_id, _)| {
                    super::req(
                        &format!("retry-{temp_id}"),
                        CONVERSATION,
                        "u1",
                        Some(temp_id),
                    )
                })
                .collect();
            for (result, (temp_id, seq)) in store.append_batch(&retries).iter().zip(&reported) {
                let message = super::duplicate(result);
                assert_eq!(
                    (message.temp_id.as_deref(), message.seq),
                    (Some(temp_id.as_str()), *seq)
                );
            }
            assert_eq!(
                super::all_messages(&store, CONVERSATION).len(),
                messages.len()
            );
        }
    }
}

#[test]
fn recent_sends_are_grouped_by_sender_in_time_order() {
    let mut store = Store::open_in_memory().expect("open");
    store.put_conversation("c1", &members()).expect("put");
    let at = |id: &str, sender: &str, ms: u64| AppendRequest {
        created_at_ms: ms,
        ..req(id, "c1", sender, None)
    };
    let batch = [
        at("m1", "bob", 1_000),
        at("m2", "alice", 5_000),
        at("m3", "alice", 3_000),
        at("m4", "bob", 9_000),
        at("m5", "alice", 8_000),
    ];
    for r in store.append_batch(&batch) {
        stored(&r);
    }
    let recent = store.recent_sends(2_000).expect("read");
    let flat: Vec<(String, Vec<u64>)> = recent.into_iter().map(|(m, t)| (m.user_id, t)).collect();
    assert_eq!(
        flat,
        vec![
            ("alice".to_owned(), vec![3_000, 5_000, 8_000]),
            ("bob".to_owned(), vec![9_000]),
        ]
    );
    assert!(store.recent_sends(9_000).expect("read").is_empty());
}

#[test]
fn the_checkpointer_copies_the_log_while_the_writer_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("heartline.db");
    let wal = dir.path().join("heartline.db-wal");
    let mut written = Vec::new();
    {
        let mut store = open(&path);
        store.put_conversation("c1", &members()).expect("c1");
        let cp = store
            .checkpointer()
            .expect("checkpointer")
            .expect("a file-backed store has one");
        let mut log_sizes = Vec::new();
        for round in 0..5 {
            let batch: Vec<AppendRequest> = (0..50)
                .map(|i| req(&format!("m{round}-{i}"), "c1", "u1", None))
                .collect();
            written.extend(store.append_batch(&batch).iter().map(|r| stored(r).clone()));
            let (log, copied) = cp.checkpoint().expect("checkpoint");
            assert!(log > 0, "round {round}: the commits went to the log");
            assert_eq!(
                copied, log,
                "round {round}: nothing reads, so all is copied"
            );
            log_sizes.push(std::fs::metadata(&wal).expect("wal").len());
        }
        // After each full checkpoint the next commit writes the log from its start again,
        // so it does not grow round after round.
        let (first, last) = (log_sizes[0], log_sizes[4]);
        assert!(last < first * 2, "log sizes by round: {log_sizes:?}");
    }
    let store = open(&path);
    assert_eq!(all_messages(&store, "c1"), written);
    assert_eq!(written.len(), 250);
}

#[test]
fn an_in_memory_store_has_no_checkpointer() {
    let store = Store::open_in_memory().expect("store");
    assert!(store.checkpointer().expect("checkpointer").is_none());
}

#[test]
fn commits_flushed_apart_are_kept_and_a_replaced_log_is_refused() {
    assert!(Store::open_in_memory()
        .expect("store")
        .sync_log_apart()
        .expect("memory")
        .is_none());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.db");
    let mut store = open(&path);
    let log = store
        .sync_log_apart()
        .expect("log")
        .expect("a file has a log");
    store.put_conversation("c", &members()).expect("put");
    let results = store.append_batch(&[req("m1", "c", "u1", Some("t1"))]);
    assert_eq!(stored(&results[0]).seq, 1);
    log.sync().expect("flush");
    drop(store);
    assert_eq!(seqs(&all_messages(&open(&path), "c")), vec![1]);

    // Another file at the log's path: flushing the old one would keep nothing of it.
    let mut store = open(&path);
    let log = store
        .sync_log_apart()
        .expect("log")
        .expect("a file has a log");
    // A second handle on it, as each flush thread has, flushes the same commits.
    let other = log.reopen().expect("another handle on the log");
    store.put_conversation("d", &members()).expect("put");
    let results = store.append_batch(&[req("m2", "d", "u1", Some("t2"))]);
    assert_eq!(stored(&results[0]).seq, 1);
    other.sync().expect("flush through the second handle");
    let wal = dir.path().join("t.db-wal");
    std::fs::rename(&wal, dir.path().join("elsewhere")).expect("move the log");
    std::fs::write(&wal, b"").expect("a new file at its path");
    assert!(matches!(log.sync(), Err(StoreError::LogSync(_))));
    assert!(matches!(other.sync(), Err(StoreError::LogSync(_))));
    assert!(matches!(log.reopen(), Err(StoreError::LogSync(_))));
}

#[test]
fn a_store_left_open_as_by_a_killed_process_opens_with_its_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.db");
    let mut store = open(&path);
    // Commits written to the log and never flushed by this process: as `kill -9` leaves
    // them, in the operating system's cache. The next open reads them back (and flushes
    // them first, which a test in one process cannot tell from the cache: this checks
    // that opening over such a log works and keeps them).
    let _log = store
        .sync_log_apart()
        .expect("log")
        .expect("a file has a log");
    store.put_conversation("c", &members()).expect("put");
    let results = store.append_batch(&[
        req("m1", "c", "u1", Some("t1")),
        req("m2", "c", "u2", Some("t2")),
    ]);
    assert_eq!(stored(&results[1]).seq, 2);
    assert!(dir.path().join("t.db-wal").exists());
    std::mem::forget(store);
    let reopened = open(&path);
    assert_eq!(seqs(&all_messages(&reopened, "c")), vec![1, 2]);
}
