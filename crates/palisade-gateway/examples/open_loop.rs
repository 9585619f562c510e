//! An open-loop load generator for `bench/gateway_latency.sh`: sends the same POST at a fixed
//! rate, whatever the server's answers do, and measures each request's latency from the time it
//! was due, not from when it was sent, so that a server that falls behind is charged for the
//! requests it held back (coordinated omission). wrk, which `gateway_vs_bare.sh` uses, is closed
//! loop: at 16 and 64 connections its latency is mostly queueing behind the server's throughput.
//!
//! Request `i` is due `i / rate` seconds after the start and goes on connection `i mod
//! connections`; each connection is one thread with its own HTTP/1.1 keep-alive socket that
//! sleeps until its next request is due (or sends at once when it is late). Responses must carry
//! `Content-Length` (hyper's do for these bodies).
//!
//! Usage: `open_loop URL RATE SECONDS CONNECTIONS BODY_FILE [HEADER: VALUE]...`; prints one JSON
//! line: requests, non-2xx, errors, achieved rate, and the latency percentiles in milliseconds.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn main() {
    if let Err(e) = run() {
        eprintln!("open_loop: {e}");
        std::process::exit(2);
    }
}

struct Target {
    host: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok(Target {
        host: host.to_string(),
        path: path.to_string(),
    })
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, rate, seconds, conns, body, headers @ ..] = &args[..] else {
        return Err(
            "usage: open_loop URL RATE SECONDS CONNECTIONS BODY_FILE [HEADER: VALUE]...".into(),
        );
    };
    let target = parse_url(url)?;
    let num = |s: &str, what: &str| {
        s.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0)
            .ok_or_else(|| format!("{what} must be a positive number, not {s:?}"))
    };
    let rate = num(rate, "RATE")?;
    let seconds = num(seconds, "SECONDS")?;
    let conns = conns
        .parse::<usize>()
        .ok()
        .filter(|c| (1..=1024).contains(c))
        .ok_or_else(|| format!("CONNECTIONS must be in 1..=1024, not {conns:?}"))?;
    let body = std::fs::read(body).map_err(|e| format!("{body}: {e}"))?;
    let mut request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
        target.path,
        target.host,
        body.len()
    );
    for h in headers {
        if !h.contains(':') || h.contains('\r') || h.contains('\n') {
            return Err(format!("{h:?} is not a header line (Name: value)"));
        }
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(&body);

    let total = (rate * seconds).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    // Every thread connects first; the schedule starts once all are ready.
    let start = Instant::now() + Duration::from_millis(200);
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            let (host, request) = (target.host.clone(), request.clone());
            std::thread::spawn(move || {
                connection(&host, &request, start, interval, total, c, conns)
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(total as usize);
    let (mut non2xx, mut errors) = (0u64, 0u64);
    for t in threads {
        let r = t
            .join()
            .map_err(|_| "a connection thread panicked".to_string())??;
        lat.extend(r.latencies);
        non2xx += r.non2xx;
        errors += r.errors;
    }
    let ended = lat.len() as u64 + errors;
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * lat.len() as f64).ceil() as usize;
        lat[i.clamp(1, lat.len()) - 1].as_secs_f64() * 1e3
    };
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "rate": rate,
            "requests": ended,
            "non2xx": non2xx,
            "errors": errors,
            "achieved_rps": lat.len() as f64 / elapsed,
            "p50_ms": pct(50.0),
            "p90_ms": pct(90.0),
            "p99_ms": pct(99.0),
            "p999_ms": pct(99.9),
            "max_ms": pct(100.0),
        })
    );
    Ok(())
}

struct Outcome {
    latencies: Vec<Duration>,
    non2xx: u64,
    errors: u64,
}

/// Sends requests `c`, `c + conns`, ... each at its due time (or at once when late) on one
/// keep-alive connection, reconnecting after an error.
fn connection(
    host: &str,
    request: &[u8],
    start: Instant,
    interval: Duration,
    total: u64,
    c: usize,
    conns: usize,
) -> Result<Outcome, String> {
    let connect = || -> std::io::Result<(TcpStream, BufReader<TcpStream>)> {
        let s = TcpStream::connect(host)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let r = BufReader::new(s.try_clone()?);
        Ok((s, r))
    };
    let mut conn = Some(connect().map_err(|e| format!("cannot connect to {host}: {e}"))?);
    let mut out = Outcome {
        latencies: Vec::new(),
        non2xx: 0,
        errors: 0,
    };
    let mut i = c as u64;
    while i < total {
        let due = start + interval.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let (s, r) = match conn.as_mut() {
            Some(c) => c,
            None => match connect() {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    out.errors += 1;
                    i += conns as u64;
                    continue;
                }
            },
        };
        match exchange(s, r, request) {
            Ok((status, keep)) => {
                out.latencies.push(due.elapsed());
                if !(200..300).contains(&status) {
                    out.non2xx += 1;
                }
                if !keep {
                    conn = None;
                }
            }
            Err(_) => {
                out.errors += 1;
                conn = None;
            }
        }
        i += conns as u64;
    }
    Ok(out)
}

/// Writes `request` and reads one response: its status and whether the connection stays open.
fn exchange(
    s: &mut TcpStream,
    r: &mut BufReader<TcpStream>,
    request: &[u8],
) -> std::io::Result<(u16, bool)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    s.write_all(request)?;
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let (mut len, mut keep) = (None, true);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("connection closed in the headers"));
        }
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                len = value.parse::<u64>().ok();
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close")
            {
                keep = false;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(bad("chunked responses are not read"));
            }
        }
    }
    let len = len.ok_or_else(|| bad("no Content-Length"))?;
    std::io::copy(&mut r.by_ref().take(len), &mut std::io::sink())?;
    Ok((status, keep))
}
