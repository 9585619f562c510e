//! Triton's streaming inference (`ModelStreamInfer`): each message of a stream through the
//! same guards as a unary call, refusals answered in the stream, unreadable messages ending it.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt as _;
use palisade_core::Classifier as _;
use palisade_gateway::grpc::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use palisade_gateway::grpc::inference::infer_parameter::ParameterChoice;
use palisade_gateway::grpc::inference::model_infer_request::InferInputTensor;
use palisade_gateway::grpc::inference::*;
use palisade_gateway::keys::{KeyStore as _, Role};
use tonic_prost::prost::Message as _;

const STREAM: &str = "/inference.GRPCInferenceService/ModelStreamInfer";

fn message(model: &str, id: &str, x: &[f32], shape: Vec<i64>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        id: id.into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape,
            ..Default::default()
        }],
        raw_input_contents: vec![x.iter().flat_map(|v| v.to_le_bytes()).collect()],
        ..Default::default()
    }
}

/// The messages `rx` gives as a streaming call with the key `key`.
fn streaming(
    rx: tokio::sync::mpsc::Receiver<ModelInferRequest>,
    key: &str,
) -> tonic::Request<impl futures_util::Stream<Item = ModelInferRequest> + Send + 'static> {
    let messages =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut r = tonic::Request::new(messages);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

/// A stream opened with the key `key`: the sender of its messages and its answers.
async fn open(
    c: &mut GrpcInferenceServiceClient<tonic::transport::Channel>,
    key: &str,
) -> (
    tokio::sync::mpsc::Sender<ModelInferRequest>,
    tonic::Streaming<ModelStreamInferResponse>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let answers = c
        .model_stream_infer(streaming(rx, key))
        .await
        .unwrap()
        .into_inner();
    (tx, answers)
}

/// Sends `m` on a stream that is to end at it: the status it ends with.
async fn ended_by(
    tx: &tokio::sync::mpsc::Sender<ModelInferRequest>,
    answers: &mut tonic::Streaming<ModelStreamInferResponse>,
    m: ModelInferRequest,
) -> tonic::Status {
    tx.send(m).await.unwrap();
    answers.message().await.unwrap_err()
}

fn floats(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_is_a_guarded_request_and_refusals_are_answered_in_the_stream() {
    let s = start().await;
    let mut c = grpc_client(&s).await;
    let x = [0.1f32, 0.9, 0.3, 0.4];
    let expected: Vec<f32> = linear("lin")
        .logits(
            ndarray::ArrayD::from_shape_vec(vec![1, 1, 2, 2], x.to_vec())
                .unwrap()
                .view(),
        )
        .unwrap()
        .iter()
        .copied()
        .collect();
    let before = s.audit_entries(0).len();
    let mut last = message("lin", "e", &x, vec![1, 1, 2, 2]);
    last.parameters.insert(
        "triton_enable_empty_final_response".into(),
        InferParameter {
            parameter_choice: Some(ParameterChoice::BoolParam(true)),
        },
    );
    let sent = vec![
        message("lin", "a", &x, vec![1, 1, 2, 2]),
        // The wrong shape: validate refuses it.
        message("lin", "b", &x, vec![1, 4]),
        // A model the key may not query.
        message("top2", "c", &x, vec![1, 1, 2, 2]),
        last,
        message("lin", "f", &x, vec![1, 1, 2, 2]),
        // Not a model name: refused before the stack, and the stream's end.
        message("no/pe", "d", &x, vec![1, 1, 2, 2]),
        message("lin", "never", &x, vec![1, 1, 2, 2]),
    ];
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    for m in sent {
        tx.send(m).await.unwrap();
    }
    drop(tx);
    let mut answers: Vec<Result<ModelStreamInferResponse, tonic::Status>> = c
        .model_stream_infer(streaming(rx, &s.query.key))
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    let end = answers.pop().unwrap().unwrap_err();
    assert_eq!(end.code(), tonic::Code::InvalidArgument, "{end:?}");
    assert!(end.message().contains("invalid model name"), "{end:?}");
    let answers: Vec<ModelStreamInferResponse> = answers.into_iter().map(|a| a.unwrap()).collect();
    let ids: Vec<&str> = answers
        .iter()
        .map(|a| a.infer_response.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(ids, ["a", "b", "c", "e", "f"], "in the order sent");
    for i in [0, 3, 4] {
        let a = &answers[i];
        assert_eq!(a.error_message, "", "{a:?}");
        let r = a.infer_response.as_ref().unwrap();
        assert_eq!(r.model_name, "lin");
        assert_eq!(floats(&r.raw_output_contents[0]), expected);
    }
    let fin = &answers[3].infer_response.as_ref().unwrap().parameters;
    assert_eq!(
        fin.get("triton_final_response")
            .and_then(|p| p.parameter_choice.clone()),
        Some(ParameterChoice::BoolParam(true))
    );
    assert!(
        answers[0]
            .infer_response
            .as_ref()
            .unwrap()
            .parameters
            .is_empty()
    );
    assert!(
        answers[1].error_message.contains("expects [N, 1, 2, 2]"),
        "{:?}",
        answers[1]
    );
    assert!(
        answers[2].error_message.contains("top2"),
        "{:?}",
        answers[2]
    );
    // One entry per message: five through the guards, one refused before them, none for the
    // message after it.
    let entries = &s.audit_entries(0)[before..];
    assert_eq!(entries.len(), 6, "{entries:?}");
    let guarded: Vec<_> = entries
        .iter()
        .filter(|e| e["method"] == "GRPC ModelStreamInfer")
        .collect();
    assert_eq!(guarded.len(), 5, "{entries:?}");
    // Messages run side by side: their entries are in the order they finished.
    let mut statuses: Vec<u64> = guarded
        .iter()
        .map(|e| e["status"].as_u64().unwrap())
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 400, 403], "{entries:?}");
    assert!(
        guarded
            .iter()
            .all(|e| e["key_id"] == s.query.record.id.as_str())
    );
    let early = entries.iter().find(|e| e["method"] == "GRPC").unwrap();
    assert_eq!(early["path"], STREAM, "{early}");
    assert_eq!(early["decision"], "denied:grpc", "{early}");
    assert_eq!(early["status"], 400, "{early}");
    assert_eq!(early["key_id"], s.query.record.id.as_str(), "{early}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_mid_stream_ends_it_at_the_next_message_and_limits_count_each() {
    let s = start().await;
    let mut c = grpc_client(&s).await;
    let x = [0.5f32; 4];
    let (tx, mut answers) = open(&mut c, &s.query.key).await;
    // "limited" allows a burst of 3 per key: the fourth message is over it.
    for i in 0..4 {
        tx.send(message("limited", &i.to_string(), &x, vec![1, 1, 2, 2]))
            .await
            .unwrap();
        let a = answers.message().await.unwrap().unwrap();
        if i < 3 {
            assert_eq!(a.error_message, "", "{a:?}");
        } else {
            assert!(a.error_message.contains("retry after"), "{a:?}");
        }
    }
    tx.send(message("lin", "before", &x, vec![1, 1, 2, 2]))
        .await
        .unwrap();
    let a = answers.message().await.unwrap().unwrap();
    assert_eq!(a.error_message, "", "{a:?}");
    assert!(s.state.keys.revoke(&s.query.record.id, now_ms()).unwrap());
    // Checked again before the message is translated: the stream ends there, audited.
    let e = ended_by(
        &tx,
        &mut answers,
        message("lin", "after", &x, vec![1, 1, 2, 2]),
    )
    .await;
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("revoked"), "{e:?}");
    let last = s.last_audit_entry();
    assert_eq!(last["status"], 401, "{last}");
    assert_eq!(last["path"], STREAM, "{last}");
    assert_eq!(last["key_id"], s.query.record.id.as_str(), "{last}");
    // Nothing more is read.
    let _ = tx.send(message("lin", "later", &x, vec![1, 1, 2, 2])).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.last_audit_entry(), last);
    s.stop().await;
}

/// The body of a streaming call, sent by hand: its frames, then its end.
fn stream_body(frames: &[Vec<u8>]) -> http_body_util::Full<bytes::Bytes> {
    http_body_util::Full::new(frames.concat().into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_cannot_be_read_ends_the_stream_after_the_answers_before_it() {
    let s = start().await;
    let auth = bearer(&s.query);
    let good = grpc_frame(&lin_infer_message("lin"));
    // Not protobuf.
    let before = s.audit_entries(0).len();
    let (code, message) = grpc_raw_to(
        s.addr,
        "ModelStreamInfer",
        &auth,
        stream_body(&[good.clone(), grpc_frame(&[0xff, 0xff]), good.clone()]),
    )
    .await;
    assert_eq!(code, "3", "{message}");
    assert!(
        message.contains("not a valid ModelInferRequest"),
        "{message}"
    );
    let entries = &s.audit_entries(0)[before..];
    assert_eq!(
        entries.len(),
        2,
        "the good message, the bad one; not the one after: {entries:?}"
    );
    let good_entry = entries.iter().find(|e| e["status"] == 200);
    assert_eq!(
        good_entry.unwrap()["method"],
        "GRPC ModelStreamInfer",
        "{entries:?}"
    );
    let bad = entries.iter().find(|e| e["path"] == STREAM).unwrap();
    assert_eq!(bad["decision"], "denied:grpc", "{entries:?}");
    assert_eq!(bad["status"], 400, "{entries:?}");

    // Naming more tensors than a request may: refused before it is decoded.
    let mut many = ModelInferRequest::decode(&lin_infer_message("lin")[..]).unwrap();
    many.inputs = vec![InferInputTensor::default(); 100];
    let (code, message) = grpc_raw_to(
        s.addr,
        "ModelStreamInfer",
        &auth,
        stream_body(&[grpc_frame(&many.encode_to_vec())]),
    )
    .await;
    assert_eq!(code, "3", "{message}");
    assert!(message.contains("tensors"), "{message}");

    // A body that ends within a message.
    let (code, message) = grpc_raw_to(
        s.addr,
        "ModelStreamInfer",
        &auth,
        stream_body(&[good.clone(), good[..good.len() - 3].to_vec()]),
    )
    .await;
    assert_eq!(code, "3", "{message}");
    assert!(message.contains("cut short"), "{message}");

    // No key: refused before any message is read, and audited.
    let (code, message) = grpc_raw_to(s.addr, "ModelStreamInfer", "", stream_body(&[good])).await;
    assert_eq!(code, "16", "{message}");
    let last = s.last_audit_entry();
    assert_eq!(last["path"], STREAM, "{last}");
    assert_eq!(last["status"], 401, "{last}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_is_held_to_its_deadline_not_the_stream() {
    let s = start().await;
    let policy = format!("{LIN_POLICY}body_timeout_ms = 300\n");
    s.models.deploy(served("quick", "1", &policy)).unwrap();
    let key = s
        .state
        .keys
        .create("quick", &[Role::Query("quick".into())], None, now_ms())
        .unwrap();
    let auth = bearer(&key);
    let good = grpc_frame(&lin_infer_message("quick"));
    let before = s.audit_entries(0).len();
    // A whole message; one sent in halves 600 ms apart, past "quick"'s 300 ms, which validate
    // refuses in the stream; a whole one 1.5 s later, when the stream is older than the 2 s a
    // body of this key may take before its model is known, and still read, since each message
    // is held on its own; then half a message and nothing for 2.3 s: the stream ends
    // DEADLINE_EXCEEDED at 2 s, the most any one message of this key may take.
    let (mut tx, body) = http_body_util::channel::Channel::<bytes::Bytes>::new(8);
    let half = good.len() / 2;
    let sender = {
        let good = good.clone();
        tokio::spawn(async move {
            tx.send_data(good.clone().into()).await.unwrap();
            tx.send_data(good[..half].to_vec().into()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(600)).await;
            tx.send_data(good[half..].to_vec().into()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            tx.send_data(good.clone().into()).await.unwrap();
            tx.send_data(good[..half].to_vec().into()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2300)).await;
            drop(tx);
        })
    };
    let t = std::time::Instant::now();
    let (code, message) = grpc_raw_to(s.addr, "ModelStreamInfer", &auth, body).await;
    assert_eq!(code, "4", "{message}");
    assert!(message.contains("within 2000 ms"), "{message}");
    assert!(
        t.elapsed() >= Duration::from_millis(4000),
        "{:?}",
        t.elapsed()
    );
    sender.abort();
    let entries = &s.audit_entries(0)[before..];
    let statuses: Vec<u64> = entries
        .iter()
        .map(|e| e["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 408, 200, 408], "{entries:?}");
    assert_eq!(entries[1]["decision"], "denied:validate", "{entries:?}");
    assert_eq!(entries[3]["decision"], "denied:grpc", "{entries:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_s_deadline_ends_the_stream_and_is_audited() {
    let s = start().await;
    let mut c = grpc_client(&s).await;
    let x = [0.5f32; 4];
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut call = streaming(rx, &s.query.key);
    call.set_timeout(Duration::from_millis(600));
    let t = std::time::Instant::now();
    let mut answers = c.model_stream_infer(call).await.unwrap().into_inner();
    tx.send(message("lin", "a", &x, vec![1, 1, 2, 2]))
        .await
        .unwrap();
    let a = answers.message().await.unwrap().unwrap();
    assert_eq!(a.error_message, "", "{a:?}");
    // The client keeps its end open and sends nothing more: the deadline ends the stream.
    let e = answers.message().await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("grpc-timeout"), "{e:?}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let last = s.last_audit_entry();
    assert_eq!(last["path"], STREAM, "{last}");
    assert_eq!(last["status"], 408, "{last}");
    assert_eq!(last["decision"], "denied:grpc", "{last}");
    drop(tx);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_under_way_when_the_client_leaves_are_recorded_and_not_run() {
    use std::sync::atomic::Ordering;
    let slow = Slow::start(LIN_POLICY, None).await;
    let key = slow.auth.trim_start_matches("Bearer ").to_string();
    let mut c = grpc_client(&slow.s).await;
    let x = [0.5f32; 4];
    let (tx, answers) = open(&mut c, &key).await;
    // One message holds the model's only thread, two wait for it.
    for id in ["1", "2", "3"] {
        tx.send(message("slow", id, &x, vec![1, 1, 2, 2]))
            .await
            .unwrap();
    }
    wait_until(|| slow.entered.load(Ordering::SeqCst) == 1).await;
    wait_until(|| slow.pool.queued() == 2).await;
    // The client goes: the stream is reset.
    drop(answers);
    drop(tx);
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    slow.open_gate();
    // Each has its entry, as a request whose client left; the two waiting were not run.
    wait_until(|| slow.entries(0).len() == 3).await;
    for e in slow.entries(0) {
        assert_eq!(e["status"], 499, "{e}");
        assert_eq!(e["method"], "GRPC ModelStreamInfer", "{e}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(slow.entered.load(Ordering::SeqCst), 1);
    assert_eq!(slow.entries(0).len(), 3);
}

/// Shutdown waits for a stream's passage that the audit guard has not taken yet: here one held
/// back, before anything is done for it, while the only place among the orphans is taken by a
/// message whose client left. Once that one ends, the held one runs, and `settle` returns only
/// after its entry. A stream still open is refused its next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_stream_s_passage_the_audit_guard_has_not_taken() {
    use std::sync::atomic::Ordering;
    let slow = Slow::start_tweaked(LIN_POLICY, None, |gw| gw.bound_orphans(1)).await;
    let key = slow.auth.trim_start_matches("Bearer ").to_string();
    let x = [0.5f32; 4];
    // A message holds the model's only thread; its client leaves: it takes the orphans' place.
    let mut first = grpc_client(&slow.s).await;
    let (tx, answers) = open(&mut first, &key).await;
    tx.send(message("slow", "1", &x, vec![1, 1, 2, 2]))
        .await
        .unwrap();
    wait_until(|| slow.entered.load(Ordering::SeqCst) == 1).await;
    drop((answers, tx, first));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Another client's message waits for a place, not yet taken by the audit guard.
    let mut second = grpc_client(&slow.s).await;
    let (tx, mut answers) = open(&mut second, &key).await;
    tx.send(message("slow", "2", &x, vec![1, 1, 2, 2]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(slow.entries(0).is_empty());
    let settling = tokio::spawn({
        let gateway = slow.s.gateway.clone();
        async move { gateway.settle().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!settling.is_finished(), "settled with a message under way");
    slow.open_gate();
    tokio::time::timeout(Duration::from_secs(10), settling)
        .await
        .expect("settle did not return")
        .unwrap();
    // Both have their entries by then: the first as its client left, the second served.
    let entries = slow.entries(0);
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0]["status"], 499, "{entries:?}");
    assert_eq!(entries[1]["status"], 200, "{entries:?}");
    let answer = answers.message().await.unwrap().unwrap();
    assert_eq!(answer.infer_response.unwrap().id, "2");
    // Once shutdown waits, a stream still open starts no more passages: its next message is
    // refused, audited, and ends it.
    let end = ended_by(
        &tx,
        &mut answers,
        message("slow", "3", &x, vec![1, 1, 2, 2]),
    )
    .await;
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end:?}");
    assert!(end.message().contains("shutting down"), "{end:?}");
    // Refused before the stack, its entry names no model.
    let refused = |e: &serde_json::Value| e["status"] == 503 && e["model"].is_null();
    wait_until(|| slow.s.audit_entries(0).iter().any(refused)).await;
    assert_eq!(slow.entries(0).len(), 2);
    assert_eq!(slow.entered.load(Ordering::SeqCst), 2);
}

/// A client that takes none of the answers for the stream idle time (here 1 s) is given up on:
/// the stream ends `DEADLINE_EXCEEDED`, audited, told after the answers queued, and no more of
/// its messages are read. The client's stream window (64 bytes) keeps the answers at the
/// gateway while it reads none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_no_answer_is_given_up_on_after_the_idle_time() {
    let s = start_tweaked(None, |gw| gw.stream_idle = Duration::from_secs(1)).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .initial_stream_window_size(64)
        .connect()
        .await
        .unwrap();
    let mut c = GrpcInferenceServiceClient::new(channel);
    let x = [0.5f32; 4];
    let (tx, mut answers) = open(&mut c, &s.query.key).await;
    // More than the stream holds (8 in the stack, 8 answered and waiting): its reading stops,
    // so the wait for the next message is not what ends it.
    let sending = tokio::spawn(async move {
        for i in 0..40 {
            let m = message("lin", &i.to_string(), &x, vec![1, 1, 2, 2]);
            if tx.send(m).await.is_err() {
                break;
            }
        }
        tx
    });
    let ended = |s: &Server| {
        s.audit_entries(0)
            .iter()
            .any(|e| e["path"] == STREAM && e["decision"] == "denied:grpc")
    };
    let t = std::time::Instant::now();
    while !ended(&s) && t.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(20),
        "the stream ended after {took:?}"
    );
    let served = s
        .audit_entries(0)
        .iter()
        .filter(|e| e["method"] == "GRPC ModelStreamInfer" && e["status"] == 200)
        .count();
    assert!((1..40).contains(&served), "{served} of 40 messages served");
    // The client reads at last: the answers queued, then why the stream ended.
    let mut answered = 0;
    let e = loop {
        match answers.message().await {
            Ok(Some(a)) => {
                assert_eq!(a.error_message, "", "{a:?}");
                answered += 1;
            }
            Ok(None) => panic!("the stream ended without a status"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("no answer was taken for 1 s"), "{e:?}");
    assert!(
        answered >= 1 && answered <= served,
        "{answered} of {served}"
    );
    drop(sending.await.unwrap());
    s.stop().await;
}

/// A stream whose client sends no next message for the stream idle time (here 1 s), all its
/// answers taken, is closed `DEADLINE_EXCEEDED` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_no_next_message_is_closed_after_the_idle_time() {
    let s = start_tweaked(None, |gw| gw.stream_idle = Duration::from_secs(1)).await;
    let mut c = grpc_client(&s).await;
    let (tx, mut answers) = open(&mut c, &s.query.key).await;
    tx.send(message("lin", "a", &[0.5; 4], vec![1, 1, 2, 2]))
        .await
        .unwrap();
    let a = answers.message().await.unwrap().unwrap();
    assert_eq!(a.error_message, "", "{a:?}");
    let t = std::time::Instant::now();
    let e = answers.message().await.unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("no message came for 1 s"), "{e:?}");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(10),
        "{took:?}"
    );
    drop(tx);
    s.stop().await;
}
