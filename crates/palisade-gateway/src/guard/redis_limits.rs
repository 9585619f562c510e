//! Rate limits and daily budgets in Redis, shared by every gateway that points at it.
//!
//! [`LocalLimits`](super::ratelimit::LocalLimits) counts in one process: behind a load balancer,
//! N gateways would each let a key through at its full rate. [`RedisLimits`] keeps the counters
//! in one Redis server instead, and charges a request with one script call (`EVALSHA`): the
//! script reads the budget, runs GCRA for the key's rate and the model's, and spends the budget,
//! all in one atomic step, so one round trip per request and no gateway ever sees another's charge
//! half done. The semantics are [`LimitStore`]'s, the same as the local store's; where they
//! differ is said here:
//! - **Clock.** GCRA runs on the Redis server's clock (`TIME`), so gateways whose clocks disagree
//!   still share one timeline. That clock is the wall clock, not a monotonic one: if it steps
//!   back by X (NTP, a failover to a replica whose clock differs), every rate state in use waits
//!   X longer; a step forward refills them. The daily budget's day is the gateway's
//!   ([`Charge::t_ms`]), as the trait says; a day earlier than the one Redis holds counts against
//!   the later one, so a gateway whose clock lags refills nothing, and its refusals wait (and
//!   its `RateLimit` items reset) until its clock reaches the end of that later day. A gateway
//!   whose day is more than [`DEFAULT_DAYS_AHEAD`] after Redis's own (set with
//!   [`RedisLimits::max_days_ahead`]) gets an error for every charge against a budget (503):
//!   the day it stored would hold every other gateway's budget for that key until it came.
//! - **Resolution.** Times are whole microseconds: an emission interval is rounded to the nearest
//!   microsecond, at least one (a rate of 7 per second runs at 142,857 µs, not 142,857.14).
//! - **Budget race.** The budget is read and spent in the same atomic step, so the race for its
//!   last unit that the local store allows (rates charged, then the budget refusing) cannot
//!   happen.
//! - **Memory.** Each rate state expires (`PX`) once it would be whole again, and each budget a
//!   day after its day ends; [`Charge::live`] is not needed. So Redis must not evict keys before
//!   they expire: give the limits an instance (or a database) whose `maxmemory-policy` is
//!   `noeviction`, the default. Under a `volatile-*` or `allkeys-*` policy, a full Redis evicts
//!   these keys first and refills bursts and budgets. [`RedisLimits::connect`] logs a warning when
//!   it can read another policy. Likewise a failover to an asynchronous replica can lose the last
//!   charges.
//! - **Timeouts.** A charge the guard stops waiting for (after
//!   [`STORE_TIMEOUT`](super::ratelimit::STORE_TIMEOUT): 503) may still run in Redis and spend
//!   its units.
//!
//! Keys are `<prefix>{<model>}:key:<rates>:<line>`, `<prefix>{<model>}:model:<rates>` and
//! `<prefix>{<model>}:day:<line>`, where `<rates>` names the pair of rates as the policy writes
//! them (a version with other rates keeps other counters, as locally). The model in braces is a
//! Redis Cluster hash tag: the keys of one charge fall in one slot, so that on a cluster
//! ([`RedisLimits::connect_cluster`]) the script runs on one node, and the models spread over
//! the nodes (a prefix with braces would be every key's tag instead: refused on a cluster).
//! Model names and key lines are letters, digits, `-`, `_` and `.`, so the parts cannot run
//! into each other. On a cluster, the rates of a model run on the clock of the node that holds
//! its slot, and the eviction check at connect reads the policy of whichever node answers.
//!
//! A key's limits are shared only by gateways that know the key by the same line: the key store
//! is each gateway's own SQLite file until a shared one exists, so today that means gateways
//! holding copies of one `keys.db`. The model's limits are shared by all of them regardless.
//!
//! **Cost.** A request waits for one round trip before it reaches the model. With Redis on the
//! same 2-core VM, the gateway served 0.69-0.73 of the local store's throughput at one connection
//! and 0.85-0.89 at 16 and 64, where Redis's own CPU (18-20 µs per request) came out of the same
//! cores (`bench/gateway_redis.sh`, 2026-12-05).
//!
//! **TLS.** A `rediss://` URL connects through rustls: the server's certificate must be valid
//! for the URL's host under the system's roots, or under [`RedisTls::ca_pem`] where given; a
//! client certificate ([`RedisTls::client`]) is offered where given. On a cluster, the nodes
//! other than those given are reached at the addresses the cluster announces (IP addresses,
//! unless its `cluster-preferred-endpoint-type` is `hostname`), which their certificates must
//! then name.
//!
//! Redis's own persistence (RDB, AOF) decides what survives a Redis restart; a Redis that cannot
//! be reached refuses requests with 503 through the guard's timeout, as every [`LimitStore`]
//! error does (the limits fail closed). The client reconnects by itself.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;

use super::ratelimit::{
    Admission, AdmitFuture, Charge, DAY_MS, DAY_SPENT, GivenBack, Item, KEY_EXCEEDED, LimitError,
    LimitStore, MODEL_EXCEEDED, Refusal, ResetFuture, ceil_secs, gcra_params, key_wait_after,
};
use crate::policy::Rate;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "palisade:";

/// How many days a gateway's day may run ahead of the Redis server's before its charges
/// against daily budgets are refused: one, as a clock a little ahead does around midnight.
pub const DEFAULT_DAYS_AHEAD: u64 = 1;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one script call may take before the client gives up on it (the guard gives up
/// earlier, after [`super::ratelimit::STORE_TIMEOUT`]).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Largest daily budget the script counts exactly (Lua numbers are doubles).
const MAX_EXACT: u64 = 1 << 53;

/// The charge, in Redis's Lua.
///
/// `KEYS`: the key's rate state, the model's rate state, the budget (a hash: `day`, `spent`).
/// `ARGV`: the key's interval (µs) and burst, the model's interval and burst (interval 0: no
/// such rate), the budget (-1: none), the gateway's day (days since the epoch, UTC), how many
/// days it may run ahead of Redis's, the units to charge (at least 1) and the units the request
/// charged before them (`Charge::before`: a rate's refusal waits for those too).
/// Returns `{outcome, wait_us, key_remaining, model_remaining, day_remaining, day}`, -1 where a
/// limit is not set (`day`: the day the budget counts against, the gateway's or a later one
/// stored); outcome 0 admitted, 1 too little budget left (nothing charged; `day_remaining` what
/// is left), 2 key's rate exceeded, 3 model's, 4 the gateway's day too far ahead (`wait_us`: by
/// how many days; nothing charged). More units than a burst holds are refused with the time the
/// whole burst takes to come back (validation keeps batches within the bursts).
const CHARGE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local kT, kB = tonumber(ARGV[1]), tonumber(ARGV[2])
local mT, mB = tonumber(ARGV[3]), tonumber(ARGV[4])
local limit, today, ahead = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local n, before = tonumber(ARGV[8]), tonumber(ARGV[9])
local krem, mrem = -1, -1
local day, spent = today, 0
if limit >= 0 then
  local sday = math.floor(now / 86400000000)
  if today > sday + ahead then return {4, today - sday, -1, -1, -1, -1} end
  local s = redis.call('HMGET', KEYS[3], 'day', 'spent')
  local d = tonumber(s[1])
  if d and d >= today then day, spent = d, tonumber(s[2]) or 0 end
  if spent + n > limit then return {1, 0, -1, -1, math.max(limit - spent, 0), day} end
end
-- GCRA as governor runs it: tolerance T * (B - 1), the theoretical arrival time stored; n
-- units weigh n - 1 intervals more than one.
local function gcra(key, T, B)
  if n > B then return false, T * B end
  local tau = T * (B - 1)
  local tat = tonumber(redis.call('GET', key)) or now
  local earliest = tat + T * (n - 1) - tau
  if now < earliest then return false, earliest - now + T * before end
  if tat < now then tat = now end
  local nxt = tat + T * n
  redis.call('SET', key, string.format('%d', nxt), 'PX', math.ceil((nxt - now) / 1000))
  return true, math.floor((now + tau + T - nxt) / T)
end
if kT > 0 then
  local ok, v = gcra(KEYS[1], kT, kB)
  if not ok then return {2, v, 0, -1, -1, -1} end
  krem = v
end
if mT > 0 then
  local ok, v = gcra(KEYS[2], mT, mB)
  if not ok then return {3, v, krem, 0, -1, -1} end
  mrem = v
end
if limit >= 0 then
  spent = spent + n
  redis.call('HSET', KEYS[3], 'day', string.format('%d', day), 'spent', string.format('%d', spent))
  -- Kept until a day after its day ends, on whichever clock is later: a gateway whose clock
  -- lags Redis's by days must not make the count expire as it is written.
  local last = math.max(day, math.floor(now / 86400000000))
  redis.call('PEXPIREAT', KEYS[3], string.format('%d', (last + 2) * 86400000))
  return {0, 0, krem, mrem, limit - spent, day}
end
return {0, 0, krem, mrem, -1, -1}
"#;

/// How to speak TLS to a `rediss://` server, beyond what the URL says. Without a CA the
/// system's roots are trusted; without a client certificate none is offered.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// PEM certificates of the CAs to trust instead of the system's roots (a private CA, as
    /// most self-hosted and in-cluster Redis servers have).
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate chain and its private key, both PEM, for a server that asks for one
    /// (`tls-auth-clients yes`).
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

impl RedisTls {
    fn is_empty(&self) -> bool {
        self.ca_pem.is_none() && self.client.is_none()
    }
}

fn config(m: String) -> LimitError {
    LimitError::Config(format!("redis: {m}"))
}

/// What redis takes of `tls`: `None` without settings; a configuration error for a CA file that
/// holds no certificate.
fn certificates(tls: &RedisTls) -> Result<Option<redis::TlsCertificates>, LimitError> {
    if tls.is_empty() {
        return Ok(None);
    }
    if let Some(ca) = &tls.ca_pem {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let certificates = CertificateDer::pem_slice_iter(ca)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| config(format!("the CA file is not PEM: {e}")))?;
        if certificates.is_empty() {
            return Err(config("the CA file holds no PEM certificate".into()));
        }
    }
    Ok(Some(redis::TlsCertificates {
        client_tls: tls
            .client
            .clone()
            .map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert,
                client_key: key,
            }),
        root_cert: tls.ca_pem.clone(),
    }))
}

fn is_tls(info: &redis::ConnectionInfo) -> bool {
    matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. })
}

/// `url` parsed; with TLS settings, it must use TLS.
fn address(url: &str, tls: &RedisTls) -> Result<redis::ConnectionInfo, LimitError> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|e| config(format!("bad URL: {e}")))?;
    let secure = is_tls(&info);
    if !tls.is_empty() && !secure {
        return Err(config(
            "a CA or a client certificate is given, but the URL does not use TLS (rediss://)"
                .into(),
        ));
    }
    if secure {
        // redis builds its rustls configuration from the process's default crypto provider,
        // which rustls can pick by itself only while one provider is compiled in; one
        // installed already (by another part of the program) is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    Ok(info)
}

/// The connection charges go through: to one server (reconnecting by itself), or to a Redis
/// Cluster (following its slots as they move).
#[derive(Clone)]
enum Conn {
    One(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Whichever the connection, redis's own calls (`Script`, `Cmd`) run through it; the cluster
/// client routes each command by its keys.
impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::One(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::One(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::One(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Rate limits and daily budgets kept in Redis (see the module documentation).
#[derive(Clone)]
pub struct RedisLimits {
    conn: Conn,
    script: redis::Script,
    prefix: String,
    /// Whether the connection is over TLS, as the URL parsed says.
    tls: bool,
    /// [`RedisLimits::max_days_ahead`].
    days_ahead: u64,
}

impl std::fmt::Debug for RedisLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimits")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(what: &str, e: redis::RedisError) -> LimitError {
    LimitError::Unavailable(format!("redis: {what}: {e}"))
}

/// A rate as the script takes it: interval in whole microseconds (0: none) and burst.
fn script_rate(r: Option<Rate>) -> (u64, u32) {
    match r {
        None => (0, 0),
        Some(r) => {
            let (per, burst) = gcra_params(r);
            let us = (per.as_nanos() + 500) / 1000;
            (u64::try_from(us).unwrap_or(u64::MAX).max(1), burst.get())
        }
    }
}

impl RedisLimits {
    /// Connects to the Redis server at `url` (`redis://[user:password@]host[:port][/db]`,
    /// `rediss://…` for TLS, with `tls`'s CA and client certificate where given, or
    /// `redis+unix:///path/to/socket`), keeping its counters under keys that start with `prefix`
    /// (several deployments can share one server with different prefixes). Checks that the
    /// server answers (over TLS: that its certificate is trusted for the URL's host) and takes
    /// the script.
    pub async fn connect(url: &str, prefix: &str, tls: &RedisTls) -> Result<Self, LimitError> {
        let info = address(url, tls)?;
        let over_tls = is_tls(&info);
        let client = match certificates(tls)? {
            None => redis::Client::open(info),
            Some(c) => redis::Client::build_with_tls(info, c),
        }
        .map_err(|e| config(format!("bad URL or TLS settings: {e}")))?;
        let settings = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, settings)
            .await
            .map_err(|e| unavailable("cannot connect", e))?;
        Self::ready(Conn::One(conn), prefix, over_tls).await
    }

    /// Connects to the Redis Cluster that `nodes` belong to (any of its nodes, each a
    /// `redis://` or `rediss://` URL as for [`RedisLimits::connect`], all with the same scheme
    /// and credentials; not Unix sockets, since the cluster names its nodes by address), keeping
    /// its counters under keys that start with `prefix`. One charge's keys share a hash tag,
    /// the model's name, so each charge runs on the node that holds that model's slot.
    pub async fn connect_cluster(
        nodes: &[String],
        prefix: &str,
        tls: &RedisTls,
    ) -> Result<Self, LimitError> {
        if nodes.is_empty() {
            return Err(config("no cluster node given".into()));
        }
        if prefix.contains(['{', '}']) {
            // Its braces would be every key's hash tag: every model on one node.
            return Err(config(format!(
                "the key prefix {prefix:?} has braces, which on a cluster would put every \
                 model's counters in one slot"
            )));
        }
        let infos = nodes
            .iter()
            .map(|n| address(n, tls))
            .collect::<Result<Vec<_>, _>>()?;
        // The client refuses nodes of mixed schemes, so the first says for all.
        let over_tls = infos.first().is_some_and(is_tls);
        let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(2);
        if let Some(c) = certificates(tls)? {
            builder = builder.certs(c);
        }
        let client = builder
            .build()
            .map_err(|e| config(format!("bad cluster nodes or TLS settings: {e}")))?;
        let conn = client
            .get_async_connection()
            .await
            .map_err(|e| unavailable("cannot connect to the cluster", e))?;
        Self::ready(Conn::Cluster(conn), prefix, over_tls).await
    }

    /// What the gateway's start line says of this store: `redis` or `redis cluster`, `over
    /// TLS` where it is, and the keys' prefix (never the address, which may hold a password).
    pub fn describe(&self) -> String {
        let kind = match self.conn {
            Conn::One(_) => "redis",
            Conn::Cluster(_) => "redis cluster",
        };
        let over = if self.tls { " over TLS" } else { "" };
        format!("{kind}{over}, keys {}*", self.prefix)
    }

    /// This store, allowing a gateway's day to run `days` ahead of the Redis server's
    /// ([`DEFAULT_DAYS_AHEAD`] unless set): beyond that, charges against daily budgets fail.
    pub fn max_days_ahead(mut self, days: u64) -> Self {
        self.days_ahead = days;
        self
    }

    /// The store on `conn`, once the script is loaded (on every primary, for a cluster).
    async fn ready(mut conn: Conn, prefix: &str, tls: bool) -> Result<Self, LimitError> {
        let script = redis::Script::new(CHARGE);
        script
            .prepare_invoke()
            .load_async(&mut conn)
            .await
            .map_err(|e| unavailable("cannot load the rate-limit script", e))?;
        // Managed services often evict by default; a server that does not let CONFIG be read
        // (renamed, or denied by an ACL) is taken at its word. (In a cluster, one node answers.)
        let policy: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut conn)
            .await;
        if let Ok(p) = policy
            && let Some(p) = p.get(1)
            && p != "noeviction"
        {
            tracing::warn!(
                maxmemory_policy = %p,
                "the Redis server that keeps the rate limits may evict their keys, which refills \
                 them; give it maxmemory-policy noeviction"
            );
        }
        Ok(RedisLimits {
            conn,
            script,
            prefix: prefix.to_string(),
            tls,
            days_ahead: DEFAULT_DAYS_AHEAD,
        })
    }

    async fn charge(&self, c: Charge<'_>) -> Result<Admission, LimitError> {
        let (kt, kb) = script_rate(c.limits.per_key);
        let (mt, mb) = script_rate(c.limits.per_model);
        // Named as the policy writes them, as the local store tells them apart.
        let name = |r: Option<Rate>| {
            r.map_or("-".to_string(), |r| {
                format!("{}/{}ms/{}", r.rate, r.period_ms, r.burst)
            })
        };
        let rates = format!("{},{}", name(c.limits.per_key), name(c.limits.per_model));
        let (p, m, line) = (&self.prefix, c.model, c.key);
        let budget = c.limits.daily_budget.map(|b| b.min(MAX_EXACT));
        let today = c.t_ms / DAY_MS;
        let mut conn = self.conn.clone();
        let mut call = self.script.key(format!("{p}{{{m}}}:key:{rates}:{line}"));
        call.key(format!("{p}{{{m}}}:model:{rates}"))
            .key(format!("{p}{{{m}}}:day:{line}"))
            .arg(kt)
            .arg(kb)
            .arg(mt)
            .arg(mb)
            .arg(budget.map_or(-1, |b| b as i64))
            .arg(today)
            .arg(self.days_ahead)
            .arg(c.units.get())
            .arg(c.before);
        let got: Vec<i64> = call
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable("the rate-limit script failed", e))?;
        let [outcome, wait_us, key_rem, model_rem, day_rem, day] = got[..] else {
            return Err(LimitError::Unavailable(format!(
                "redis: the rate-limit script answered {got:?}"
            )));
        };
        if outcome == 4 {
            return Err(LimitError::Unavailable(format!(
                "redis: this gateway's clock is {wait_us} days ahead of the Redis server's, more \
                 than the {} allowed: daily budgets are not charged until the clocks agree",
                self.days_ahead
            )));
        }
        let remaining = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
        let mut items = Vec::with_capacity(3);
        // The day counted (-1 only without a budget; `Item::day` takes a day behind as today).
        let day = u64::try_from(day).unwrap_or(0);
        let day_item = |rem: i64| {
            budget
                .map(|limit| Item::day(limit, u64::try_from(rem.max(0)).unwrap_or(0), day, c.t_ms))
        };
        if outcome == 1 {
            let item = day_item(day_rem).ok_or_else(|| {
                LimitError::Unavailable("redis: a budget refused a policy without one".into())
            })?;
            let wait = item.reset_s;
            items.push(item);
            return Ok(Admission::Refused(Refusal::new(items, wait, DAY_SPENT)));
        }
        let wait = ceil_secs(Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)));
        if let Some(r) = c.limits.per_key {
            items.push(Item::gcra("key", r, remaining(key_rem)));
            if outcome == 2 {
                return Ok(Admission::Refused(Refusal::new(items, wait, KEY_EXCEEDED)));
            }
        }
        let key_wait = c.limits.per_key.map_or(0, |r| {
            key_wait_after(r, remaining(key_rem), c.units.saturating_add(c.before))
        });
        if let Some(r) = c.limits.per_model {
            items.push(Item::gcra("model", r, remaining(model_rem)));
            if outcome == 3 {
                let wait = wait.max(key_wait);
                return Ok(Admission::Refused(Refusal::new(
                    items,
                    wait,
                    MODEL_EXCEEDED,
                )));
            }
        }
        if outcome != 0 {
            return Err(LimitError::Unavailable(format!(
                "redis: the rate-limit script answered outcome {outcome}"
            )));
        }
        items.extend(day_item(day_rem));
        Ok(Admission::Admitted(items))
    }
}

impl LimitStore for RedisLimits {
    fn admit<'a>(&'a self, charge: Charge<'a>) -> AdmitFuture<'a> {
        Box::pin(self.charge(charge))
    }

    fn reset_budget<'a>(&'a self, line: &'a str, model: &'a str, t_ms: u64) -> ResetFuture<'a> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let key = format!("{}{{{model}}}:day:{line}", self.prefix);
            // Read and deleted in one step, so that what is answered is what was given back.
            let (day, spent): (Option<i64>, Option<i64>) = redis::pipe()
                .atomic()
                .hget(&key, "day")
                .hget(&key, "spent")
                .del(&key)
                .ignore()
                .query_async(&mut conn)
                .await
                .map_err(|e| unavailable("giving back a daily budget failed", e))?;
            let today = i64::try_from(t_ms / DAY_MS).unwrap_or(i64::MAX);
            Ok(match (day, spent) {
                (Some(day), Some(spent)) if spent > 0 && day >= today => Some(GivenBack {
                    day: u64::try_from(day).unwrap_or(0),
                    spent: u64::try_from(spent).unwrap_or(0),
                }),
                _ => None,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::script_rate;
    use crate::policy::Rate;

    #[test]
    fn intervals_are_whole_microseconds_at_least_one() {
        let r = |rate, period_ms, burst| {
            Some(Rate {
                rate,
                period_ms,
                burst,
            })
        };
        assert_eq!(script_rate(None), (0, 0));
        assert_eq!(script_rate(r(1, 1000, 5)), (1_000_000, 5));
        assert_eq!(script_rate(r(7, 1000, 1)), (142_857, 1));
        assert_eq!(script_rate(r(3, 2, 1)), (667, 1));
        assert_eq!(script_rate(r(1_000_000, 1, 1)), (1, 1));
    }
}
