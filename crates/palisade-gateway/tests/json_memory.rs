//! Decoding a JSON infer request holds memory in proportion to its numbers, not a tree of JSON
//! values: a 4 MiB body of `0,0,0,…` (2 bytes a number) took 71 MiB at its peak when `data` was
//! parsed into `serde_json::Value`s first, and 62 MiB more when the numbers were in a
//! `parameters` map (reviews, 2026-12-06). In a file of its own, so that the process's peak
//! resident size is this test's.

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// `2 * n` bytes of JSON: `n` zeros, comma-separated.
fn zeros(n: usize) -> String {
    let mut s = "0,".repeat(n);
    s.pop();
    s
}

#[test]
fn a_json_body_is_decoded_in_memory_bounded_by_its_numbers() {
    let n = 2 * 1024 * 1024 - 64;
    // First the smaller peak: entries of a `parameters` map that the server does not act on are
    // skipped as they are parsed.
    let body = format!(
        r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"FP32","data":[0],"parameters":{{"p":[{}]}}}}]}}"#,
        zeros(n)
    );
    let before = peak_rss_kib();
    let r = palisade_gateway::oip::decode_request(body.as_bytes(), None).unwrap();
    let grew_mib = (peak_rss_kib() - before) / 1024;
    assert_eq!(r.inputs[0].data.len(), 1);
    assert!(
        grew_mib <= 4,
        "decoding a 4 MiB body with a long parameter took {grew_mib} MiB more at its peak"
    );
    drop((body, r));

    let body = format!(
        r#"{{"inputs":[{{"name":"x","shape":[{n}],"datatype":"FP32","data":[{}]}}]}}"#,
        zeros(n)
    );
    let before = peak_rss_kib();
    let r = palisade_gateway::oip::decode_request(body.as_bytes(), None).unwrap();
    let grew_mib = (peak_rss_kib() - before) / 1024;
    assert_eq!(r.inputs[0].data.len(), n);
    // The f32s themselves are 8 MiB, and up to 16 MiB while their vector grows.
    assert!(
        grew_mib <= 20,
        "decoding a 4 MiB body took {grew_mib} MiB more at its peak"
    );
}
