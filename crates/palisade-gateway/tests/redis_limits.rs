//! The Redis rate-limit store against a real `redis-server`, started by each test on a socket of
//! its own: it must decide as the local store does, and gateways sharing it must share the
//! limits.
//!
//! Without `redis-server` on the PATH (or at `$PALISADE_REDIS_SERVER`) these tests say so and
//! pass, unless `PALISADE_REQUIRE_REDIS` is set, as `.ci/run` sets it after installing Redis.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Pki, pki};
use palisade_gateway::guard::ratelimit::{
    Admission, Charge, GivenBack, Item, LimitError, LimitStore, LocalLimits,
};
use palisade_gateway::guard::redis_limits::{RedisLimits, RedisTls};
use palisade_gateway::policy::{Count, LimitPolicy, Rate};

const DAY_MS: u64 = 86_400_000;

/// A `redis-server` on a Unix socket in a folder of its own (and on whatever else `args` add),
/// killed on drop.
struct Redis {
    bin: String,
    args: Vec<std::ffi::OsString>,
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Redis {
    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    fn spawn(
        bin: &str,
        dir: &std::path::Path,
        args: &[std::ffi::OsString],
    ) -> std::io::Result<Child> {
        Command::new(bin)
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(dir.join("redis.sock"))
            .arg("--dir")
            .arg(dir)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
    }

    fn wait_ready(&self) {
        let t = Instant::now();
        while !self.socket.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }

    /// A new server on the same socket, with none of the old one's data.
    fn restart(&mut self) {
        self.stop();
        self.child = Redis::spawn(&self.bin, self.dir.path(), &self.args).unwrap();
        self.wait_ready();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn redis() -> Option<Redis> {
    redis_with(tempfile::tempdir().unwrap(), Vec::new())
}

/// [`redis`] in `dir`, with more arguments for `redis-server`.
fn redis_with(dir: tempfile::TempDir, args: Vec<std::ffi::OsString>) -> Option<Redis> {
    let bin = std::env::var("PALISADE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let child = match Redis::spawn(&bin, dir.path(), &args) {
        Ok(c) => c,
        Err(e) if std::env::var_os("PALISADE_REQUIRE_REDIS").is_none() => {
            eprintln!(
                "skipped: cannot start {bin} ({e}); set PALISADE_REQUIRE_REDIS to fail instead"
            );
            return None;
        }
        Err(e) => panic!("cannot start {bin}: {e}"),
    };
    let r = Redis {
        bin,
        args,
        child,
        socket: dir.path().join("redis.sock"),
        dir,
    };
    r.wait_ready();
    Some(r)
}

fn rate(rate: u32, period_ms: u64, burst: u32) -> Option<Rate> {
    Some(Rate {
        rate,
        period_ms,
        burst,
    })
}

/// A daily budget of `n` requests and no rates.
fn budget_only(n: u64) -> LimitPolicy {
    LimitPolicy {
        per_key: None,
        per_model: None,
        daily_budget: Some(n),
        count: Count::Samples,
    }
}

/// A decision, comparable: what refused (or `admitted`), the items, `Retry-After`.
type Decided = (&'static str, Vec<Item>, u64);

async fn charge(store: &dyn LimitStore, key: &str, policy: &LimitPolicy, t_ms: u64) -> Decided {
    try_charge(store, key, policy, t_ms)
        .await
        .expect("the store answers")
}

/// [`charge`], or the store's error; it must answer within 10 s either way.
async fn try_charge(
    store: &dyn LimitStore,
    key: &str,
    policy: &LimitPolicy,
    t_ms: u64,
) -> Result<Decided, LimitError> {
    try_charge_on(store, "m", key, policy, t_ms).await
}

/// [`try_charge`] to `model`.
async fn try_charge_on(
    store: &dyn LimitStore,
    model: &str,
    key: &str,
    policy: &LimitPolicy,
    t_ms: u64,
) -> Result<Decided, LimitError> {
    try_charge_units(store, model, key, policy, t_ms, (1, 0)).await
}

/// [`try_charge_on`], `units` at once (a batch's samples), `before` charged earlier by the
/// same request.
async fn try_charge_units(
    store: &dyn LimitStore,
    model: &str,
    key: &str,
    policy: &LimitPolicy,
    t_ms: u64,
    (units, before): (u32, u32),
) -> Result<Decided, LimitError> {
    let live = || vec![policy.clone()];
    let key = key.to_string();
    let c = Charge {
        key: &key,
        model,
        limits: policy,
        units: std::num::NonZeroU32::new(units).expect("at least one unit"),
        before,
        t_ms,
        live: &live,
    };
    let decided = tokio::time::timeout(Duration::from_secs(10), store.admit(c))
        .await
        .expect("an answer, not a hang")?;
    Ok(match decided {
        Admission::Admitted(items) => ("admitted", items, 0),
        Admission::Refused(r) => (r.what, r.items, r.retry_after),
    })
}

/// Noon of some day, so that a test's charges fall on one day.
fn noon() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    (now / DAY_MS) * DAY_MS + DAY_MS / 2
}

/// Each scenario, on a fresh local store and the Redis store: the same decisions, items and
/// `Retry-After`, in order. The rates are slow (an hour per request), so the stores' clocks
/// moving on during the test changes nothing.
#[tokio::test]
async fn decides_as_the_local_store_does() {
    let Some(server) = redis() else { return };
    let shared = RedisLimits::connect(&server.url(), "t:", &RedisTls::default())
        .await
        .unwrap();
    decides_as_local(&shared).await;
}

/// The scenarios of [`decides_as_the_local_store_does`], on `shared` (whose counters under
/// `t:` must be fresh).
async fn decides_as_local(shared: &RedisLimits) {
    // Its scenarios charge up to two days after today.
    let shared = &shared.clone().max_days_ahead(2);
    let hour = 3_600_000;
    let rates = LimitPolicy {
        per_key: rate(1, hour, 3),
        per_model: rate(1, hour, 5),
        daily_budget: Some(4),
        count: Count::Samples,
    };
    // The model refuses at once, the key only later: the refusal's wait is the key's.
    let slow_key = LimitPolicy {
        per_key: rate(1, 60_000, 2),
        per_model: rate(1, 1000, 1),
        daily_budget: None,
        count: Count::Samples,
    };
    let budget = LimitPolicy {
        per_key: rate(1, hour, 2),
        per_model: None,
        daily_budget: Some(1),
        count: Count::Samples,
    };
    let t = noon();
    // (key, policy, t_ms): a's burst runs out; b's charges run out the model; on the budget
    // policy, c's second request meets the spent budget and charges no rate, so that on the
    // next day the key's second unit is still there, and the third request meets the rate.
    let script: Vec<(&str, &LimitPolicy, u64)> = vec![
        ("a", &rates, t),
        ("a", &rates, t),
        ("a", &rates, t),
        ("a", &rates, t),
        ("b", &rates, t),
        ("b", &rates, t),
        ("b", &rates, t),
        ("c", &budget, t),
        ("c", &budget, t),
        ("c", &budget, t + DAY_MS),
        ("c", &budget, t + 2 * DAY_MS),
        // A clock a day behind the day counted: the refusal waits until it reaches that day's end.
        ("e", &budget, t + DAY_MS),
        ("e", &budget, t),
        ("d", &slow_key, t),
        ("d", &slow_key, t),
    ];
    let local = LocalLimits::default();
    let mut seen = Vec::new();
    let mut last_retry = 0;
    for (key, policy, t_ms) in script {
        let want = charge(&local, key, policy, t_ms).await;
        let got = charge(shared, key, policy, t_ms).await;
        assert_eq!(got, want, "charge {} by {key}", seen.len());
        seen.push(got.0);
        last_retry = got.2;
    }
    // The scenarios reach what they are meant to.
    use palisade_gateway::guard::ratelimit::{DAY_SPENT, KEY_EXCEEDED, MODEL_EXCEEDED};
    let a = "admitted";
    assert_eq!(
        seen,
        [
            a,
            a,
            a,
            KEY_EXCEEDED,
            a,
            a,
            MODEL_EXCEEDED,
            a,
            DAY_SPENT,
            a,
            KEY_EXCEEDED,
            a,
            DAY_SPENT,
            a,
            MODEL_EXCEEDED
        ]
    );
    assert_eq!(last_retry, 60, "the key's minute, not the model's second");

    // Several units at once (a batch's samples, `Count::Samples`): the same decisions again.
    let batch = LimitPolicy {
        per_key: rate(1, hour, 5),
        per_model: rate(1, hour, 9),
        daily_budget: Some(7),
        ..LimitPolicy::default()
    };
    let narrow = LimitPolicy {
        per_key: rate(1, hour, 2),
        per_model: None,
        daily_budget: None,
        ..LimitPolicy::default()
    };
    let solo = LimitPolicy {
        per_key: rate(1, hour, 5),
        per_model: None,
        daily_budget: None,
        ..LimitPolicy::default()
    };
    // (key, policy, units): f spends 3, is refused 3 by its rate (2 left), spends 2 more; then
    // 3 more meet a budget with 2 left, charging nothing; g spends 2, and its 3 more pass its
    // rate but not the model's (2 left of 9): the wait is the key's, until its 3 are back; h asks
    // for more than its burst holds. (Units, units the request charged before: the refusals'
    // waits cover those too.)
    let script: Vec<(&str, &LimitPolicy, (u32, u32))> = vec![
        ("f", &batch, (3, 0)),
        ("f", &batch, (3, 0)),
        ("f", &batch, (2, 0)),
        ("f", &batch, (3, 0)),
        ("g", &batch, (2, 0)),
        ("g", &batch, (3, 1)),
        ("h", &narrow, (3, 0)),
        ("i", &solo, (4, 1)),
        ("i", &solo, (2, 1)),
    ];
    let mut seen = Vec::new();
    let mut decided = Vec::new();
    for (key, policy, units) in script {
        let want = try_charge_units(&local, "m2", key, policy, t, units)
            .await
            .unwrap();
        let got = try_charge_units(shared, "m2", key, policy, t, units)
            .await
            .unwrap();
        assert_eq!(got, want, "batch charge {} by {key}", seen.len());
        seen.push(got.0);
        decided.push(got);
    }
    assert_eq!(
        seen,
        [
            a,
            KEY_EXCEEDED,
            a,
            DAY_SPENT,
            a,
            MODEL_EXCEEDED,
            KEY_EXCEEDED,
            a,
            KEY_EXCEEDED
        ]
    );
    // What the budget refusal says is left (it refuses before any rate is charged).
    assert_eq!(decided[3].1, vec![Item::day(7, 2, t / DAY_MS, t)]);
    // The model's refusal waits until the key has the retry's 4 units back (3, and the one
    // its request charged before): four hours, not the model's two.
    assert_eq!(decided[5].2, 4 * 3600);
    // i's 2 more meet a key with 1 left: one hour until 2 fit, and one more for the unit its
    // retry charges first.
    assert_eq!(decided[8].2, 2 * 3600);
    // More than a burst: the wait is the whole burst's.
    assert_eq!(decided[6].2, 7200);
}

/// Two gateways (two connections) on one Redis: a key's burst is spent across both, and a
/// refusal on one holds on the other; another prefix counts apart.
#[tokio::test]
async fn gateways_on_one_redis_share_the_limits() {
    let Some(server) = redis() else { return };
    let policy = LimitPolicy {
        per_key: rate(1, 3_600_000, 4),
        per_model: None,
        daily_budget: Some(100),
        count: Count::Samples,
    };
    let one = RedisLimits::connect(&server.url(), "t:", &RedisTls::default())
        .await
        .unwrap();
    let two = RedisLimits::connect(&server.url(), "t:", &RedisTls::default())
        .await
        .unwrap();
    let t = noon();
    let mut remaining = Vec::new();
    for store in [&one, &two, &one, &two] {
        let (what, items, _) = charge(store, "k", &policy, t).await;
        assert_eq!(what, "admitted");
        remaining.push((items[0].remaining, items[1].remaining));
    }
    assert_eq!(remaining, [(3, 99), (2, 98), (1, 97), (0, 96)]);
    for store in [&one, &two] {
        assert_eq!(
            charge(store, "k", &policy, t).await.0,
            "rate limit for this key exceeded"
        );
    }
    let apart = RedisLimits::connect(&server.url(), "other:", &RedisTls::default())
        .await
        .unwrap();
    assert_eq!(charge(&apart, "k", &policy, t).await.0, "admitted");
}

/// A gateway whose clock is a day behind the one Redis counts refills nothing: its charges
/// count against the later day.
#[tokio::test]
async fn a_day_behind_counts_against_the_later_day() {
    let Some(server) = redis() else { return };
    let policy = budget_only(2);
    let store = RedisLimits::connect(&server.url(), "t:", &RedisTls::default())
        .await
        .unwrap()
        .max_days_ahead(2);
    let t = noon();
    let (what, items, _) = charge(&store, "k", &policy, t + DAY_MS).await;
    assert_eq!((what, items[0].remaining), ("admitted", 1));
    let (what, items, _) = charge(&store, "k", &policy, t).await;
    assert_eq!((what, items[0].remaining), ("admitted", 0));
    // Whole again when this gateway's clock reaches the end of the later day: a day and a half
    // from its noon, not its own midnight.
    let day_and_half = 3 * DAY_MS / 2 / 1000;
    assert_eq!(items[0].reset_s, day_and_half);
    let (what, _, retry_after) = charge(&store, "k", &policy, t).await;
    assert_eq!(
        (what, retry_after),
        ("daily query budget exhausted", day_and_half)
    );
    let (what, items, _) = charge(&store, "k", &policy, t + 2 * DAY_MS).await;
    assert_eq!((what, items[0].remaining), ("admitted", 1));
    // A gateway whose clock is days behind Redis's: its count must not expire as it is written.
    let week_ago = t - 7 * DAY_MS;
    let (what, items, _) = charge(&store, "old", &policy, week_ago).await;
    assert_eq!((what, items[0].remaining), ("admitted", 1));
    let (what, items, _) = charge(&store, "old", &policy, week_ago).await;
    assert_eq!((what, items[0].remaining), ("admitted", 0));
    assert_eq!(
        charge(&store, "old", &policy, week_ago).await.0,
        "daily query budget exhausted"
    );
}

/// A budget given back counts from zero again, on both stores alike, whatever day it counted; the
/// rates and the other budgets are left as they are.
#[tokio::test]
async fn a_budget_given_back_counts_from_zero() {
    let Some(server) = redis() else { return };
    let shared = RedisLimits::connect(&server.url(), "reset:", &RedisTls::default())
        .await
        .unwrap();
    gives_back_as_local(&shared).await;
}

/// Budgets given back on `shared` and on a local store, on models whose keys lie in different
/// slots (keys `gb*`).
async fn gives_back_as_local(shared: &RedisLimits) {
    let local = LocalLimits::default();
    let policy = budget_only(2);
    let t = noon();
    for store in [shared as &dyn LimitStore, &local] {
        for model in ["m", "a", "b", "c", "d"] {
            let charge = |key, t| try_charge_on(store, model, key, &policy, t);
            // A day ahead (a clock that ran ahead), the other key's today, and a third key's
            // yesterday.
            for _ in 0..2 {
                assert_eq!(charge("gb", t + DAY_MS).await.unwrap().0, "admitted");
            }
            assert_eq!(charge("gb2", t).await.unwrap().0, "admitted");
            assert_eq!(charge("gb3", t - DAY_MS).await.unwrap().0, "admitted");
            assert_eq!(
                charge("gb", t).await.unwrap().0,
                "daily query budget exhausted"
            );
            let given = store.reset_budget("gb", model, t).await.unwrap();
            let day = t / DAY_MS + 1;
            assert_eq!(given, Some(GivenBack { day, spent: 2 }), "{model}");
            assert_eq!(store.reset_budget("gb", model, t).await.unwrap(), None);
            assert_eq!(store.reset_budget("gb", "other", t).await.unwrap(), None);
            // Yesterday's count held nothing back today: nothing is said to be given back.
            assert_eq!(store.reset_budget("gb3", model, t).await.unwrap(), None);
            let (what, items, _) = charge("gb", t).await.unwrap();
            assert_eq!((what, items[0].remaining), ("admitted", 1));
            let (what, items, _) = charge("gb2", t).await.unwrap();
            assert_eq!((what, items[0].remaining), ("admitted", 0));
        }
    }
}

/// A gateway whose day runs more than a day ahead of Redis's charges no budget (an error: 503):
/// the day it would store would hold the key's budget on every other gateway until that day.
/// A day ahead is allowed, as is any day for a policy without a budget.
#[tokio::test]
async fn a_day_far_ahead_charges_no_budget() {
    let Some(server) = redis() else { return };
    let policy = budget_only(2);
    let store = RedisLimits::connect(&server.url(), "t:", &RedisTls::default())
        .await
        .unwrap();
    let t = noon();
    let e = try_charge(&store, "k", &policy, t + 2 * DAY_MS)
        .await
        .unwrap_err();
    assert!(matches!(e, LimitError::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("2 days ahead"), "{e}");
    // Nothing was spent or moved: today's budget is whole, and so is tomorrow's.
    let (what, items, _) = charge(&store, "k", &policy, t).await;
    assert_eq!((what, items[0].remaining), ("admitted", 1));
    let (what, items, _) = charge(&store, "k", &policy, t + DAY_MS).await;
    assert_eq!((what, items[0].remaining), ("admitted", 1));
    // Rates run on Redis's clock: a clock far ahead changes nothing for them.
    let rates = LimitPolicy {
        per_key: rate(1, 3_600_000, 1),
        per_model: None,
        daily_budget: None,
        count: Count::Samples,
    };
    assert_eq!(
        charge(&store, "r", &rates, t + 30 * DAY_MS).await.0,
        "admitted"
    );
    // Allowed further, it is charged.
    let lenient = store.max_days_ahead(3);
    let (what, items, _) = charge(&lenient, "far", &policy, t + 3 * DAY_MS).await;
    assert_eq!((what, items[0].remaining), ("admitted", 1));
}

/// GCRA on the Redis clock: a spent burst comes back after the emission interval.
#[tokio::test]
async fn a_spent_rate_comes_back_after_its_interval() {
    let Some(server) = redis() else { return };
    let policy = LimitPolicy {
        per_key: rate(1, 1000, 1),
        per_model: None,
        daily_budget: None,
        count: Count::Samples,
    };
    let store = RedisLimits::connect(&server.url(), "t:", &RedisTls::default())
        .await
        .unwrap();
    let t = noon();
    let first = Instant::now();
    assert_eq!(charge(&store, "k", &policy, t).await.0, "admitted");
    let (what, _, retry) = charge(&store, "k", &policy, t).await;
    // Within the interval (a machine that stalled for most of a second proves nothing here).
    if first.elapsed() < Duration::from_millis(900) {
        assert_eq!((what, retry), ("rate limit for this key exceeded", 1));
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (what, items, _) = charge(&store, "k", &policy, t).await;
    assert_eq!((what, items[0].remaining), ("admitted", 0));
}

/// No Redis at the address: `connect` says so; Redis gone after it: a charge is an error, not
/// an admission (the guard answers 503), and once Redis is back the client reconnects.
#[tokio::test]
async fn without_redis_charges_are_errors() {
    let Some(mut server) = redis() else { return };
    let missing = format!("redis+unix://{}.missing", server.socket.display());
    let e = RedisLimits::connect(&missing, "t:", &RedisTls::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cannot connect"), "{e}");
    let e = RedisLimits::connect("http://localhost", "t:", &RedisTls::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("bad URL"), "{e}");

    let store = RedisLimits::connect(&server.url(), "t:", &RedisTls::default())
        .await
        .unwrap();
    let policy = LimitPolicy::default();
    let t = noon();
    assert_eq!(charge(&store, "k", &policy, t).await.0, "admitted");
    server.stop();
    let admit = || async {
        try_charge(&store, "k", &policy, t)
            .await
            .map(|(what, _, _)| what == "admitted")
    };
    let r = admit().await;
    assert!(matches!(r, Err(LimitError::Unavailable(_))), "{r:?}");
    server.restart();
    // The client reconnects by itself: a charge is admitted again within a few tries.
    let admitted = eventually(Duration::from_secs(10), async || {
        admit().await.map_err(|e| e.to_string())
    })
    .await;
    assert!(admitted);
}

/// `attempt`'s first `Ok`, trying every 50 ms; a panic with its last `Err` (why not yet) once
/// `within` has passed.
async fn eventually<T>(within: Duration, mut attempt: impl AsyncFnMut() -> Result<T, String>) -> T {
    let t0 = Instant::now();
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(why) => assert!(t0.elapsed() < within, "not within {within:?}: {why}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `redis-server` arguments for clients over TLS only on `port`, with `pki`'s certificate (its
/// files written into `dir`), asking clients for certificates of `pki`'s CA or not.
fn tls_args(
    dir: &std::path::Path,
    pki: &Pki,
    port: u16,
    auth_clients: bool,
) -> Vec<std::ffi::OsString> {
    let file = |name: &str, pem: &str| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p.into_os_string()
    };
    vec![
        "--tls-port".into(),
        port.to_string().into(),
        "--tls-cert-file".into(),
        file("server.pem", &pki.cert),
        "--tls-key-file".into(),
        file("server.key", &pki.key),
        "--tls-ca-cert-file".into(),
        file("ca.pem", &pki.ca),
        "--tls-auth-clients".into(),
        if auth_clients { "yes" } else { "no" }.into(),
    ]
}

impl Redis {
    /// A connection of the test's own, over the node's Unix socket.
    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Over TLS (`rediss://`) to a server with a private CA that asks for client certificates: the
/// CA and a client certificate given, the limits work; a server certificate from a CA not given,
/// or no client certificate, and the gateway does not connect; TLS settings on a URL without
/// TLS, or a CA file with no certificate, are configuration errors.
#[tokio::test]
async fn over_tls_with_a_private_ca_and_a_client_certificate() {
    let (server_pki, client_pki) = pki(&["localhost", "127.0.0.1"]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let args = tls_args(dir.path(), &server_pki, port, true);
    let Some(server) = redis_with(dir, args) else {
        return;
    };
    let url = format!("rediss://localhost:{port}/");
    let tls = RedisTls {
        ca_pem: Some(server_pki.ca.clone().into_bytes()),
        client: Some((
            client_pki.cert.clone().into_bytes(),
            client_pki.key.clone().into_bytes(),
        )),
    };
    let store = RedisLimits::connect(&url, "t:", &tls).await.unwrap();
    assert_eq!(store.describe(), "redis over TLS, keys t:*");
    let policy = LimitPolicy {
        per_key: rate(1, 3_600_000, 1),
        per_model: None,
        daily_budget: None,
        count: Count::Samples,
    };
    let t = noon();
    assert_eq!(charge(&store, "k", &policy, t).await.0, "admitted");
    assert_eq!(
        charge(&store, "k", &policy, t).await.0,
        "rate limit for this key exceeded"
    );
    // The same counters as over the socket: TLS is only the way there.
    let plain = RedisLimits::connect(&server.url(), "t:", &RedisTls::default())
        .await
        .unwrap();
    assert_eq!(
        charge(&plain, "k", &policy, t).await.0,
        "rate limit for this key exceeded"
    );

    // The server's certificate is not from a CA this gateway trusts.
    let (other, _) = pki(&["localhost"]);
    let strangers = [
        RedisTls::default(),
        RedisTls {
            ca_pem: Some(other.ca.into_bytes()),
            ..tls.clone()
        },
    ];
    for t in &strangers {
        let e = RedisLimits::connect(&url, "t:", t).await.unwrap_err();
        assert!(matches!(e, LimitError::Unavailable(_)), "{e}");
        assert!(e.to_string().contains("cannot connect"), "{e}");
    }
    // Trusted, but with no certificate of its own to show.
    let anonymous = RedisTls {
        client: None,
        ..tls.clone()
    };
    let e = RedisLimits::connect(&url, "t:", &anonymous)
        .await
        .unwrap_err();
    assert!(matches!(e, LimitError::Unavailable(_)), "{e}");

    let e = RedisLimits::connect(&server.url(), "t:", &tls)
        .await
        .unwrap_err();
    assert!(matches!(e, LimitError::Config(_)), "{e}");
    assert!(e.to_string().contains("does not use TLS"), "{e}");
    let not_a_ca = RedisTls {
        ca_pem: Some(client_pki.key.into_bytes()),
        client: None,
    };
    let e = RedisLimits::connect(&url, "t:", &not_a_ca)
        .await
        .unwrap_err();
    assert!(matches!(e, LimitError::Config(_)), "{e}");
    assert!(e.to_string().contains("no PEM certificate"), "{e}");
}

/// A Redis Cluster of `n` primaries on loopback, its slots split evenly, once every node says
/// the cluster is up and knows every slot's owner; the nodes and their `redis://` URLs.
async fn redis_cluster(n: u16) -> Option<(Vec<Redis>, Vec<String>)> {
    redis_cluster_with(n, None).await
}

/// [`redis_cluster`]; with `tls`, its nodes take clients (and each other, on the cluster bus)
/// over TLS only, with `tls`'s certificate, and the URLs are `rediss://`.
async fn redis_cluster_with(n: u16, tls: Option<&Pki>) -> Option<(Vec<Redis>, Vec<String>)> {
    cluster_of(n, false, tls).await
}

/// [`redis_cluster_with`]; with `replicated`, each primary `i` also has a replica, node `n + i`,
/// and a replica takes over its primary's slots a second or two after losing it
/// (`cluster-node-timeout` 1 s).
async fn cluster_of(
    n: u16,
    replicated: bool,
    tls: Option<&Pki>,
) -> Option<(Vec<Redis>, Vec<String>)> {
    let total = if replicated { 2 * n } else { n };
    let (mut nodes, mut urls, mut buses) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..total {
        let (port, bus) = (free_port(), free_port());
        let dir = tempfile::tempdir().unwrap();
        // Full coverage not required: a test stops a node and expects the others to go on
        // serving their slots, which they would stop doing once they had marked it failed.
        let mut args: Vec<std::ffi::OsString> = [
            "--cluster-port",
            &bus.to_string(),
            "--cluster-enabled",
            "yes",
            "--cluster-require-full-coverage",
            "no",
        ]
        .iter()
        .map(|a| a.into())
        .collect();
        if replicated {
            args.extend(["--cluster-node-timeout".into(), "1000".into()]);
        }
        match tls {
            None => args.extend(["--port".into(), port.to_string().into()]),
            Some(pki) => {
                args.extend(tls_args(dir.path(), pki, port, false));
                args.extend(["--tls-cluster".into(), "yes".into()]);
            }
        }
        nodes.push(redis_with(dir, args)?);
        let scheme = if tls.is_some() { "rediss" } else { "redis" };
        urls.push(format!("{scheme}://127.0.0.1:{port}"));
        buses.push((port, bus));
    }
    let mut conns = Vec::new();
    for node in &nodes {
        conns.push(node.conn().await);
    }
    let per = 16_384 / n;
    for (i, c) in conns[..usize::from(n)].iter_mut().enumerate() {
        let i = i as u16;
        let last = if i + 1 == n {
            16_383
        } else {
            (i + 1) * per - 1
        };
        let _: () = redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(i * per)
            .arg(last)
            .query_async(c)
            .await
            .unwrap();
    }
    // Each node its own config epoch, as `redis-cli --cluster create` sets them: nodes that
    // meet with equal epochs settle the collision among themselves, a while after they report
    // the cluster up.
    for (i, c) in conns.iter_mut().enumerate() {
        let _: () = redis::cmd("CLUSTER")
            .arg("SET-CONFIG-EPOCH")
            .arg(i + 1)
            .query_async(c)
            .await
            .unwrap();
    }
    for (port, bus) in &buses[1..] {
        let _: () = redis::cmd("CLUSTER")
            .arg("MEET")
            .arg("127.0.0.1")
            .arg(*port)
            .arg(*bus)
            .query_async(&mut conns[0])
            .await
            .unwrap();
    }
    for c in &mut conns {
        eventually(Duration::from_secs(30), async || {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(c)
                .await
                .unwrap();
            // With full coverage not required, a node says `ok` before it has learnt
            // where the other nodes' slots are; a client that asked it then would find
            // those slots unserved.
            let up = info.contains("cluster_state:ok")
                && info.contains(&format!("cluster_known_nodes:{total}"))
                && info.contains("cluster_slots_ok:16384");
            up.then_some(())
                .ok_or(format!("the cluster is not up: {info}"))
        })
        .await;
    }
    if replicated {
        let n = usize::from(n);
        for i in 0..n {
            let id: String = redis::cmd("CLUSTER")
                .arg("MYID")
                .query_async(&mut conns[i])
                .await
                .unwrap();
            let _: () = redis::cmd("CLUSTER")
                .arg("REPLICATE")
                .arg(id)
                .query_async(&mut conns[n + i])
                .await
                .unwrap();
        }
        for c in &mut conns[..n] {
            wait_for_info(c, "replication", "connected_slaves:1").await;
        }
    }
    Some((nodes, urls))
}

/// Waits (up to 30 s) until `INFO section` on `c` says `says`.
async fn wait_for_info(c: &mut impl redis::aio::ConnectionLike, section: &str, says: &str) {
    eventually(Duration::from_secs(30), async || {
        let info: String = redis::cmd("INFO")
            .arg(section)
            .query_async(c)
            .await
            .unwrap();
        info.contains(says)
            .then_some(())
            .ok_or(format!("not {says}: {info}"))
    })
    .await;
}

/// Twelve models, whose slots spread over a cluster's nodes, each with a key allowed one
/// request an hour: the request through `a` is admitted, the same through `b` refused. The
/// models, the policy and the time charged.
async fn shared_by(a: &RedisLimits, b: &RedisLimits) -> (Vec<String>, LimitPolicy, u64) {
    let once = LimitPolicy {
        per_key: rate(1, 3_600_000, 1),
        per_model: None,
        daily_budget: None,
        count: Count::Samples,
    };
    let t = noon();
    let models: Vec<String> = (0..12).map(|i| format!("model-{i}")).collect();
    for m in &models {
        let first = try_charge_on(a, m, "k", &once, t).await.unwrap();
        let second = try_charge_on(b, m, "k", &once, t).await.unwrap();
        assert_eq!(
            (first.0, second.0),
            ("admitted", "rate limit for this key exceeded"),
            "{m}"
        );
    }
    (models, once, t)
}

/// A primary lost where it has a replica: the replica takes over its slots, and the gateways'
/// charges for its models go on there, against the counters replicated before the loss (a key
/// spent before is still spent after).
#[tokio::test]
async fn on_a_cluster_a_replica_takes_over_with_the_counters() {
    let Some((mut nodes, urls)) = cluster_of(3, true, None).await else {
        return;
    };
    let none = RedisTls::default();
    let a = RedisLimits::connect_cluster(&urls[..1], "t:", &none)
        .await
        .unwrap();
    let b = RedisLimits::connect_cluster(&urls[2..3], "t:", &none)
        .await
        .unwrap();
    let (models, once, t) = shared_by(&a, &b).await;
    // Every charge is on the replicas before a primary goes (replication is asynchronous: a
    // failover can lose the last charges, as the module says).
    // (Each WAIT is short: the test's connections give up on an answer after a while.)
    for node in &nodes[..3] {
        let mut c = node.conn().await;
        eventually(Duration::from_secs(30), async || {
            let acked: i64 = redis::cmd("WAIT")
                .arg(1)
                .arg(200)
                .query_async(&mut c)
                .await
                .unwrap();
            (acked == 1).then_some(()).ok_or("not replicated".into())
        })
        .await;
    }
    // The primary that goes holds some models' counters, so that their charges must go
    // through its replica (node 4) once it has taken over.
    let held: u64 = redis::cmd("DBSIZE")
        .query_async(&mut nodes[1].conn().await)
        .await
        .unwrap();
    assert!(held > 0, "no model's counters on the primary that goes");
    nodes[1].stop();
    wait_for_info(&mut nodes[4].conn().await, "replication", "role:master").await;
    for m in &models {
        // Errors until the clients learn where the slots went.
        let (what, _, _) = eventually(Duration::from_secs(20), async || {
            try_charge_on(&b, m, "k", &once, t)
                .await
                .map_err(|e| format!("{m}: {e}"))
        })
        .await;
        assert_eq!(what, "rate limit for this key exceeded", "{m}");
    }
    // A model whose counters were never written is charged afresh on any node.
    assert_eq!(
        try_charge_on(&a, "model-new", "k", &once, t)
            .await
            .unwrap()
            .0,
        "admitted"
    );
}

/// On a Redis Cluster of three primaries, found from one of them: the scenarios decide as the
/// local store does, two gateways share the limits of models whose slots lie on different
/// nodes, and a Unix socket is refused (a cluster names its nodes by address).
#[tokio::test]
async fn on_a_cluster_as_on_one_server() {
    let Some((nodes, urls)) = redis_cluster(3).await else {
        return;
    };
    let none = RedisTls::default();
    let a = RedisLimits::connect_cluster(&urls[..1], "t:", &none)
        .await
        .unwrap();
    decides_as_local(&a).await;
    gives_back_as_local(&a).await;

    let b = RedisLimits::connect_cluster(&urls[2..], "t:", &none)
        .await
        .unwrap();
    let (models, once, t) = shared_by(&a, &b).await;
    // The models' counters lie on more than one node.
    let mut holding = 0;
    for node in &nodes {
        let mut c = node.conn().await;
        let keys: u64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
        holding += usize::from(keys > 0);
    }
    assert!(holding >= 2, "all counters on one node");

    // A primary gone (and no replica to take its slots): the charges of its models fail, the
    // others go on, even where the script has to be loaded again (the survivors have lost it,
    // as a restarted node or a promoted replica would have).
    let mut nodes = nodes;
    nodes[1].stop();
    for node in [&nodes[0], &nodes[2]] {
        let mut c = node.conn().await;
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let (mut failed, mut served) = (0, 0);
    for m in &models {
        match try_charge_on(&a, m, "other", &once, t).await {
            Ok((what, _, _)) => {
                assert_eq!(what, "admitted", "{m}");
                served += 1;
            }
            Err(e) => {
                assert!(matches!(e, LimitError::Unavailable(_)), "{e}");
                failed += 1;
            }
        }
    }
    assert!(failed > 0 && served > 0, "{failed} failed, {served} served");

    let unix = vec![nodes[0].url()];
    let e = RedisLimits::connect_cluster(&unix, "t:", &none)
        .await
        .unwrap_err();
    assert!(matches!(e, LimitError::Config(_)), "{e}");
    let e = RedisLimits::connect_cluster(&urls, "{t}:", &none)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("braces"), "{e}");
    let e = RedisLimits::connect_cluster(&[], "t:", &none)
        .await
        .unwrap_err();
    assert!(matches!(e, LimitError::Config(_)), "{e}");
}

/// A cluster whose nodes speak only TLS, to clients and among themselves: found from one node
/// with the private CA, the others reached at the addresses the cluster announces (IP
/// addresses, which the nodes' certificate names), it counts as one server does; without the CA
/// it is not reached.
#[tokio::test]
async fn on_a_cluster_over_tls() {
    let (node_pki, _) = pki(&["localhost", "127.0.0.1"]);
    let Some((_nodes, urls)) = redis_cluster_with(3, Some(&node_pki)).await else {
        return;
    };
    let tls = RedisTls {
        ca_pem: Some(node_pki.ca.clone().into_bytes()),
        client: None,
    };
    let a = RedisLimits::connect_cluster(&urls[..1], "t:", &tls)
        .await
        .unwrap();
    assert_eq!(a.describe(), "redis cluster over TLS, keys t:*");
    let b = RedisLimits::connect_cluster(&urls[1..2], "t:", &tls)
        .await
        .unwrap();
    shared_by(&a, &b).await;
    let e = RedisLimits::connect_cluster(&urls[..1], "t:", &RedisTls::default())
        .await
        .unwrap_err();
    assert!(matches!(e, LimitError::Unavailable(_)), "{e}");
}
