//! The Redis permissions the worker needs, and the self-check that names a missing one at start.
//!
//! Owns the list of every command the transfer path sends, with the kind of key each touches
//! and where in the code it is sent ([`WORKER_NEEDS`]), and
//! [`WalletService::check_permissions`], which asks Redis whether the connected user may run
//! each of them, without changing any data. `deploy/redis-acl.conf` (and `docs/operations.md`,
//! "Redis permissions") grants exactly this list; the `tls::` integration tests check both ways
//! that the list, the ACL line and the check agree. A command added to the transfer path belongs
//! here too, or a worker whose user lacks it fails at the first transfer instead of at start.
//!
//! How the check asks without doing anything, in two round trips on a connection that is then
//! closed:
//!
//! ```text
//! 1. PING, WATCH (one per kind of key), UNWATCH, EXEC (no MULTI open: an error reply unless
//!    refused), MULTI        - commands that cannot be queued, each harmless when it runs
//! 2. every other command, queued behind that MULTI on probe keys (`wallet:permission-check`,
//!    ...)                   - Redis checks the ACL at queue time; queued commands run only at
//!                             an EXEC, which never comes: the connection is closed with the
//!                             MULTI open, and Redis drops the transaction
//! ```
//!
//! (No DISCARD: the worker does not need it otherwise, and a refused one would show in the
//! server's ACL LOG at every start.)
//!
//! A refused command answers `NOPERM` at once (a queued one instead of `QUEUED`), naming the
//! command or saying a key was refused; the probe it answered says which command and key
//! pattern that was. Commands that scripts send (`GET`, `DEL` in the lock release) are checked
//! by Redis against the same ACL, so they are probed as plain commands. Round trip 2 is sent
//! only when MULTI was granted: behind a refused MULTI the probes would run.

use crate::engine::service::WalletService;
use crate::engine::store::keys;

/// A kind of key of the data model (ARCHITECTURE.md, "Redis data model") that the worker
/// touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `wallet:{id}`, a hash.
    Wallet,
    /// A wallet's history: `wallet:{id}:log`, a list, and `wallet:{id}:history`, the stream
    /// of the older format.
    History,
    /// `transfer:{idempotency_key}`, the outcome record.
    Outcome,
    /// `lock:{id}`, a wallet lock.
    Lock,
}

impl KeyKind {
    /// The key pattern that grants it, as written in an ACL rule after `~`.
    pub fn pattern(self) -> &'static str {
        match self {
            KeyKind::Wallet | KeyKind::History => keys::WALLET_PATTERN,
            KeyKind::Outcome => keys::OUTCOME_PATTERN,
            KeyKind::Lock => keys::LOCK_PATTERN,
        }
    }

    /// The key the check names in its probes; never written.
    pub fn probe_key(self) -> String {
        match self {
            KeyKind::Wallet => keys::wallet(PROBE_ID),
            KeyKind::History => keys::log(PROBE_ID),
            KeyKind::Outcome => keys::outcome(PROBE_ID),
            KeyKind::Lock => keys::lock(PROBE_ID),
        }
    }
}

/// The id in the probe keys.
pub const PROBE_ID: &str = "permission-check";

/// Stands for the probe key of a [`Need`]'s [`KeyKind`] in its probe arguments.
const KEY: &str = "{key}";

/// When a probe is sent: on its own, or queued inside MULTI (and so never run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Round trip 1: cannot be queued, and harmless when it runs.
    Direct,
    /// Round trip 2: queued behind MULTI and discarded.
    Queued,
}

/// One command the worker sends, on at most one kind of key, with the probe that asks Redis
/// whether the user may send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// The command as an ACL rule names it after `+`: `hgetall`, `script|load`.
    pub acl: &'static str,
    /// The probe: the command and its arguments, `KEY` standing for the probe key.
    pub args: &'static [&'static str],
    /// The kind of key it touches, if any (for the `~pattern` it needs).
    pub key: Option<KeyKind>,
    /// Whether the probe runs directly or queued behind MULTI.
    pub phase: Phase,
    /// Where the engine sends it.
    pub used_by: &'static str,
}

impl Need {
    /// The probe command, on the probe key.
    pub fn probe(&self) -> redis::Cmd {
        let mut cmd = redis::Cmd::new();
        for arg in self.args {
            match (*arg, self.key) {
                (KEY, Some(kind)) => cmd.arg(kind.probe_key()),
                _ => cmd.arg(*arg),
            };
        }
        cmd
    }

    /// The command's name as Redis spells it: `HGETALL`, `SCRIPT LOAD`.
    pub fn command(&self) -> String {
        self.acl.replace('|', " ").to_uppercase()
    }
}

/// A script hash for the EVALSHA probe; Redis checks the ACL of a queued EVALSHA without
/// looking the script up.
const PROBE_SHA: &str = "0000000000000000000000000000000000000000";

const fn direct(
    acl: &'static str,
    args: &'static [&'static str],
    key: Option<KeyKind>,
    used_by: &'static str,
) -> Need {
    Need {
        acl,
        args,
        key,
        phase: Phase::Direct,
        used_by,
    }
}

const fn queued(
    acl: &'static str,
    args: &'static [&'static str],
    key: KeyKind,
    used_by: &'static str,
) -> Need {
    Need {
        acl,
        args,
        key: Some(key),
        phase: Phase::Queued,
        used_by,
    }
}

/// Every command the worker sends to Redis, on each kind of key it sends it on. The direct
/// probes come first and end with MULTI; the queued ones follow.
pub const WORKER_NEEDS: [Need; 18] = [
    direct(
        "ping",
        &["PING"],
        None,
        "store.rs: the connection check; worker/health.rs: /readyz",
    ),
    direct(
        "watch",
        &["WATCH", KEY],
        Some(KeyKind::Wallet),
        "transfer.rs add_watch_and_reads",
    ),
    direct(
        "watch",
        &["WATCH", KEY],
        Some(KeyKind::Outcome),
        "transfer.rs add_watch_and_reads",
    ),
    direct(
        "watch",
        &["WATCH", KEY],
        Some(KeyKind::Lock),
        "transfer.rs add_watch_and_reads",
    ),
    direct(
        "unwatch",
        &["UNWATCH"],
        None,
        "lock.rs attempt_pipeline, unwatch_and_find_no_ttl; transfer.rs unwatch",
    ),
    // Outside MULTI, EXEC only answers an error ("EXEC without MULTI") when it is granted.
    direct(
        "exec",
        &["EXEC"],
        None,
        "transfer.rs transaction (MULTI/EXEC)",
    ),
    direct(
        "multi",
        &["MULTI"],
        None,
        "transfer.rs transaction (MULTI/EXEC)",
    ),
    queued(
        "hgetall",
        &["HGETALL", KEY],
        KeyKind::Wallet,
        "transfer.rs add_watch_and_reads",
    ),
    queued(
        "hgetall",
        &["HGETALL", KEY],
        KeyKind::Outcome,
        "transfer.rs add_watch_and_reads, transfer_outcome",
    ),
    queued(
        "mget",
        &["MGET", KEY],
        KeyKind::Lock,
        "transfer.rs add_watch_and_reads (after an aborted EXEC)",
    ),
    queued(
        "set",
        &["SET", KEY, "probe", "NX", "PX", "1000"],
        KeyKind::Lock,
        "lock.rs attempt_pipeline",
    ),
    queued(
        "pttl",
        &["PTTL", KEY],
        KeyKind::Lock,
        "lock.rs unwatch_and_find_no_ttl (lock timeout)",
    ),
    queued(
        "evalsha",
        &["EVALSHA", PROBE_SHA, "1", KEY, "probe"],
        KeyKind::Lock,
        "lock.rs release_keys (the release script)",
    ),
    // redis-rs loads a script the server does not know (NOSCRIPT) and tries EVALSHA again.
    Need {
        acl: "script|load",
        args: &["SCRIPT", "LOAD", "return 0"],
        key: None,
        phase: Phase::Queued,
        used_by: "lock.rs release_keys, through redis-rs Script::invoke",
    },
    // Commands a script sends are checked against the same ACL.
    queued("get", &["GET", KEY], KeyKind::Lock, "lock.rs RELEASE_LUA"),
    queued(
        "del",
        &["DEL", KEY],
        KeyKind::Lock,
        "transfer.rs transaction; lock.rs RELEASE_LUA",
    ),
    queued(
        "hset",
        &["HSET", KEY, "balance", "0", "version", "1"],
        KeyKind::Wallet,
        "transfer.rs transaction (balance and version)",
    ),
    queued(
        "rpush",
        &["RPUSH", KEY, "probe"],
        KeyKind::History,
        "wallet.rs add_history, in transfer.rs transaction",
    ),
];

/// The outcome record: written by every transfer; given a ttl only with
/// `EngineConfig::outcome_ttl_ms`.
pub const OUTCOME_NEEDS: [Need; 2] = [
    queued(
        "hset",
        &["HSET", KEY, "status", "probe"],
        KeyKind::Outcome,
        "transfer.rs transaction (the outcome record)",
    ),
    queued(
        "pexpire",
        &["PEXPIRE", KEY, "1000"],
        KeyKind::Outcome,
        "transfer.rs transaction, with outcome_ttl_ms set",
    ),
];

/// The history trim (`EngineConfig::history_max_entries`): the script and what it sends.
pub const TRIM_NEEDS: [Need; 9] = [
    queued(
        "eval",
        &["EVAL", "return 0", "1", KEY],
        KeyKind::History,
        "retention.rs add_trim (the trim script)",
    ),
    queued(
        "xlen",
        &["XLEN", KEY],
        KeyKind::History,
        "retention.rs TRIM_LUA",
    ),
    queued(
        "xrange",
        &["XRANGE", KEY, "-", "+", "COUNT", "1"],
        KeyKind::History,
        "retention.rs TRIM_LUA",
    ),
    queued(
        "xtrim",
        &["XTRIM", KEY, "MAXLEN", "1000"],
        KeyKind::History,
        "retention.rs TRIM_LUA",
    ),
    queued(
        "del",
        &["DEL", KEY],
        KeyKind::History,
        "retention.rs TRIM_LUA (an emptied older stream)",
    ),
    queued(
        "llen",
        &["LLEN", KEY],
        KeyKind::History,
        "retention.rs TRIM_LUA",
    ),
    queued(
        "lrange",
        &["LRANGE", KEY, "0", "0"],
        KeyKind::History,
        "retention.rs TRIM_LUA",
    ),
    queued(
        "ltrim",
        &["LTRIM", KEY, "1", "-1"],
        KeyKind::History,
        "retention.rs TRIM_LUA",
    ),
    queued(
        "hincrby",
        &["HINCRBY", KEY, "hc", "0"],
        KeyKind::Wallet,
        "retention.rs TRIM_LUA (the checkpoint)",
    ),
];

/// What the worker needs with these settings: [`WORKER_NEEDS`], the outcome record's HSET,
/// its PEXPIRE when outcome records expire, and [`TRIM_NEEDS`] when histories are trimmed.
/// Direct probes first.
pub fn worker_needs(outcome_ttl: bool, history_trim: bool) -> Vec<Need> {
    let mut needs = WORKER_NEEDS.to_vec();
    needs.push(OUTCOME_NEEDS[0]);
    if outcome_ttl {
        needs.push(OUTCOME_NEEDS[1]);
    }
    if history_trim {
        needs.extend(TRIM_NEEDS);
    }
    needs
}

/// A reply to a probe, reduced to what the check reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A status or a value: `OK`, `QUEUED`, `PONG`, ...
    Value(String),
    /// An error reply, code and message: `NOPERM this user has no permissions ...`.
    Error(String),
}

impl Reply {
    /// The reply as text: an error with its code, or the value.
    pub fn from_value(value: &redis::Value) -> Reply {
        match value {
            redis::Value::ServerError(e) => {
                Reply::Error(format!("{} {}", e.code(), e.details().unwrap_or_default()))
            }
            redis::Value::Okay => Reply::Value("OK".into()),
            redis::Value::SimpleString(s) => Reply::Value(s.clone()),
            other => Reply::Value(format!("{other:?}")),
        }
    }
}

/// What one reply says about one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The user may send it.
    Granted,
    /// `NOPERM` for the command itself.
    CommandRefused,
    /// `NOPERM` for a key: the key pattern is missing (or grants too little, `%R~` only).
    KeyRefused,
    /// A queued probe answered something other than `QUEUED` or `NOPERM`.
    Unexpected(String),
}

/// Reads one reply. Pure. A refusal is a `NOPERM` error anywhere in the reply (a refused EXEC
/// answers `EXECABORT ... NOPERM ...`); it names the command as "run the 'x' command", and a
/// key otherwise. A direct probe is granted by any other reply (EXEC answers an error when
/// granted); a queued one only by `QUEUED`.
pub fn judge(phase: Phase, reply: &Reply) -> Verdict {
    match reply {
        Reply::Error(text) if text.contains("NOPERM") => {
            if text.contains("run the '") {
                Verdict::CommandRefused
            } else {
                Verdict::KeyRefused
            }
        }
        Reply::Error(text) if phase == Phase::Queued => Verdict::Unexpected(text.clone()),
        Reply::Value(text) if phase == Phase::Queued && text != "QUEUED" => {
            Verdict::Unexpected(text.clone())
        }
        _ => Verdict::Granted,
    }
}

/// A permission the user lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// The command is not granted (`+acl`).
    Command {
        /// The command.
        need: Need,
    },
    /// The command is granted but not on this kind of key (`~pattern`).
    KeyPattern {
        /// The command.
        need: Need,
        /// The kind of key it may not touch.
        kind: KeyKind,
    },
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Missing::Command { need } => write!(
                f,
                "command {} (grant +{}; used by {})",
                need.command(),
                need.acl,
                need.used_by
            ),
            Missing::KeyPattern { need, kind } => write!(
                f,
                "key pattern ~{} for {} {} (grant ~{} with read and write; used by {})",
                kind.pattern(),
                need.command(),
                kind.probe_key(),
                kind.pattern(),
                need.used_by
            ),
        }
    }
}

/// The missing permissions the replies show, each command and each key pattern once, in the
/// order of `needs`. Pure. `replies` may stop short of `needs` (the queued probes are not sent
/// when MULTI is refused); the needs without a reply are not judged.
pub fn missing(needs: &[Need], replies: &[Reply]) -> Result<Vec<Missing>, PermissionError> {
    let mut found: Vec<Missing> = Vec::new();
    for (need, reply) in needs.iter().zip(replies) {
        let gap = match judge(need.phase, reply) {
            Verdict::Granted => continue,
            Verdict::Unexpected(reply) => {
                return Err(PermissionError::Unexpected {
                    command: need.command(),
                    reply,
                });
            }
            Verdict::CommandRefused => Missing::Command { need: *need },
            Verdict::KeyRefused => match need.key {
                Some(kind) => Missing::KeyPattern { need: *need, kind },
                None => {
                    return Err(PermissionError::Unexpected {
                        command: need.command(),
                        reply: format!("{reply:?} (a key refused, yet the probe names none)"),
                    });
                }
            },
        };
        let known = found.iter().any(|m| match (m, &gap) {
            (Missing::Command { need: a }, Missing::Command { need: b }) => a.acl == b.acl,
            (Missing::KeyPattern { kind: a, .. }, Missing::KeyPattern { kind: b, .. }) => {
                a.pattern() == b.pattern()
            }
            _ => false,
        });
        if !known {
            found.push(gap);
        }
    }
    Ok(found)
}

/// Why the permission check failed: permissions are missing (it names each), or the check
/// itself could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PermissionError {
    /// The user lacks these permissions.
    #[error("{}", describe_missing(missing, *unchecked))]
    Missing {
        /// Every permission missing, with the ACL rule that grants it.
        missing: Vec<Missing>,
        /// Probes not sent because MULTI was refused.
        unchecked: usize,
    },
    #[error(
        "Redis permission check: {command} answered {reply:?} where QUEUED or NOPERM was expected"
    )]
    /// A probe got an answer the check does not understand.
    Unexpected {
        /// The probe.
        command: String,
        /// What Redis answered.
        reply: String,
    },
    /// Redis failed.
    #[error("Redis permission check: redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No pooled connection in time.
    #[error("Redis permission check: redis pool: {0}")]
    Pool(#[from] r2d2::Error),
}

fn describe_missing(missing: &[Missing], unchecked: usize) -> String {
    let list: Vec<String> = missing.iter().map(Missing::to_string).collect();
    let mut text = format!(
        "the Redis user lacks permissions the worker needs: {}",
        list.join("; ")
    );
    if unchecked > 0 {
        text.push_str(&format!(
            " ({unchecked} more commands are checked inside a MULTI, so not until MULTI is granted)"
        ));
    }
    text.push_str(
        ". The whole ACL line is in deploy/redis-acl.conf (docs/operations.md, \"Redis permissions\")",
    );
    text
}

impl WalletService {
    /// Checks that the Redis user may run every command the worker sends, on every kind of
    /// key it sends it on ([`worker_needs`]), without changing any data: two round trips on a
    /// pooled connection that is closed afterwards (see the module doc). The error names each
    /// missing command or key pattern and what to grant.
    ///
    /// The worker calls it at start, after [`WalletService::connect`]; the operator tools do not
    /// (they may run as other users).
    pub fn check_permissions(&self) -> Result<(), PermissionError> {
        let needs = worker_needs(
            self.config.outcome_ttl_ms.is_some(),
            self.config.history_max_entries.is_some(),
        );
        let split = needs
            .iter()
            .take_while(|n| n.phase == Phase::Direct)
            .count();
        let (direct, queued) = needs.split_at(split);
        debug_assert!(queued.iter().all(|n| n.phase == Phase::Queued));
        debug_assert_eq!(direct.last().map(|n| n.acl), Some("multi"));
        let pool = match self.topology.one_pool() {
            Some(pool) => pool,
            None => {
                // The probes' keys are the standalone names, spread over slots a node may not
                // serve; the check on a cluster is later work (issue 11).
                log::warn!(
                    "Redis permissions are not checked on a Redis Cluster yet; grant the ACL of deploy/redis-acl.conf on every node"
                );
                return Ok(());
            }
        };
        let mut conn = pool.get()?;
        // The pool closes it when it comes back (at the end of this call), MULTI still open:
        // nothing queued ever runs, and nothing the check leaves is reused.
        conn.taint();
        let mut replies = send(&mut conn.redis, direct)?;
        let multi = replies.last().expect("one reply per direct probe");
        if judge(Phase::Direct, multi) == Verdict::Granted {
            replies.extend(send(&mut conn.redis, queued)?);
        }
        let found = missing(&needs, &replies)?;
        if found.is_empty() {
            return Ok(());
        }
        Err(PermissionError::Missing {
            missing: found,
            unchecked: needs.len() - replies.len(),
        })
    }
}

/// Sends the probes of `needs` in one round trip and returns one reply per probe, errors
/// included.
fn send(conn: &mut redis::Connection, needs: &[Need]) -> Result<Vec<Reply>, PermissionError> {
    use redis::ConnectionLike;
    let mut pipe = redis::pipe();
    for need in needs {
        pipe.add_command(need.probe());
    }
    let values = conn.req_packed_commands(&pipe.get_packed_pipeline(), 0, pipe.len())?;
    Ok(values.iter().map(Reply::from_value).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noperm_command(name: &str) -> Reply {
        Reply::Error(format!(
            "NOPERM this user has no permissions to run the '{name}' command"
        ))
    }

    fn noperm_key() -> Reply {
        Reply::Error(
            "NOPERM this user has no permissions to access one of the keys used as arguments"
                .into(),
        )
    }

    fn replies_all_granted(needs: &[Need]) -> Vec<Reply> {
        needs
            .iter()
            .map(|n| match (n.phase, n.acl) {
                (Phase::Queued, _) => Reply::Value("QUEUED".into()),
                (Phase::Direct, "exec") => Reply::Error("ERR EXEC without MULTI".into()),
                (Phase::Direct, "ping") => Reply::Value("PONG".into()),
                (Phase::Direct, _) => Reply::Value("OK".into()),
            })
            .collect()
    }

    fn index(needs: &[Need], acl: &str, key: Option<KeyKind>) -> usize {
        needs
            .iter()
            .position(|n| n.acl == acl && (key.is_none() || n.key == key))
            .unwrap_or_else(|| panic!("no need {acl} {key:?}"))
    }

    #[test]
    fn every_command_granted_is_nothing_missing() {
        let needs = worker_needs(true, true);
        assert_eq!(missing(&needs, &replies_all_granted(&needs)).unwrap(), []);
    }

    #[test]
    fn a_refused_command_is_named_once_with_what_to_grant() {
        let needs = worker_needs(false, true);
        let mut replies = replies_all_granted(&needs);
        replies[index(&needs, "hgetall", Some(KeyKind::Wallet))] = noperm_command("hgetall");
        replies[index(&needs, "hgetall", Some(KeyKind::Outcome))] = noperm_command("hgetall");
        let found = missing(&needs, &replies).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        let text = found[0].to_string();
        assert!(
            text.starts_with("command HGETALL (grant +hgetall; "),
            "{text}"
        );
    }

    #[test]
    fn a_refused_key_names_its_pattern_and_the_command_that_met_it() {
        let needs = worker_needs(false, true);
        let mut replies = replies_all_granted(&needs);
        replies[index(&needs, "watch", Some(KeyKind::Lock))] = noperm_key();
        replies[index(&needs, "set", None)] = noperm_key();
        let found = missing(&needs, &replies).unwrap();
        assert_eq!(
            found,
            [Missing::KeyPattern {
                need: needs[index(&needs, "watch", Some(KeyKind::Lock))],
                kind: KeyKind::Lock
            }]
        );
        assert!(
            found[0]
                .to_string()
                .starts_with("key pattern ~lock:* for WATCH lock:permission-check (grant ~lock:*"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn a_refused_exec_answers_execabort_and_is_still_a_refusal() {
        let reply = Reply::Error(
            "EXECABORT Transaction discarded because of: NOPERM this user has no permissions \
             to run the 'exec' command"
                .into(),
        );
        assert_eq!(judge(Phase::Direct, &reply), Verdict::CommandRefused);
        assert_eq!(
            judge(
                Phase::Direct,
                &Reply::Error("ERR EXEC without MULTI".into())
            ),
            Verdict::Granted
        );
    }

    #[test]
    fn newer_redis_wording_is_read_too() {
        // Redis 7.2 names the user and words the key refusal differently.
        let command =
            Reply::Error("NOPERM User wallet has no permissions to run the 'xadd' command".into());
        assert_eq!(judge(Phase::Queued, &command), Verdict::CommandRefused);
        let key = Reply::Error("NOPERM No permissions to access a key".into());
        assert_eq!(judge(Phase::Queued, &key), Verdict::KeyRefused);
    }

    #[test]
    fn a_queued_probe_must_answer_queued() {
        let needs = worker_needs(false, true);
        let mut replies = replies_all_granted(&needs);
        let rpush = index(&needs, "rpush", None);
        replies[rpush] = Reply::Error("ERR wrong number of arguments for 'rpush' command".into());
        let e = missing(&needs, &replies).unwrap_err();
        assert!(e.to_string().contains("RPUSH answered"), "{e}");
        replies[rpush] = Reply::Value("OK".into());
        assert!(missing(&needs, &replies).is_err());
    }

    #[test]
    fn unanswered_probes_are_not_judged_and_are_counted_as_unchecked() {
        let needs = worker_needs(false, true);
        let mut replies = replies_all_granted(&needs);
        let multi = index(&needs, "multi", None);
        replies.truncate(multi + 1);
        replies[multi] = noperm_command("multi");
        let found = missing(&needs, &replies).unwrap();
        assert_eq!(found.len(), 1);
        let e = PermissionError::Missing {
            missing: found,
            unchecked: needs.len() - replies.len(),
        };
        let text = e.to_string();
        assert!(text.contains("command MULTI (grant +multi;"), "{text}");
        assert!(
            text.contains(&format!(
                "({} more commands are checked inside a MULTI",
                needs.len() - multi - 1
            )),
            "{text}"
        );
        assert!(
            text.ends_with("deploy/redis-acl.conf (docs/operations.md, \"Redis permissions\")")
        );
    }

    #[test]
    fn the_direct_probes_come_first_and_end_with_multi() {
        for (ttl, trim) in [(false, false), (true, false), (false, true), (true, true)] {
            let needs = worker_needs(ttl, trim);
            let direct = needs
                .iter()
                .take_while(|n| n.phase == Phase::Direct)
                .count();
            assert_eq!(needs[direct - 1].acl, "multi");
            assert!(needs[direct..].iter().all(|n| n.phase == Phase::Queued));
            assert_eq!(
                needs.iter().any(|n| n.acl == "pexpire"),
                ttl,
                "PEXPIRE only with an outcome ttl"
            );
            assert_eq!(
                needs.iter().any(|n| n.acl == "eval"),
                trim,
                "EVAL only with a history trim"
            );
        }
    }

    #[test]
    fn probes_name_the_probe_keys_in_their_patterns() {
        for need in worker_needs(true, true) {
            let packed = String::from_utf8_lossy(&need.probe().get_packed_command()).into_owned();
            if let Some(kind) = need.key.filter(|_| need.args.contains(&KEY)) {
                let key = kind.probe_key();
                assert!(packed.contains(&key), "{packed:?}");
                let prefix = kind.pattern().trim_end_matches('*');
                assert!(key.starts_with(prefix), "{key} in ~{}", kind.pattern());
            }
            assert!(!packed.contains(KEY), "{packed:?}");
        }
    }
}
