use kasuhara_guard::pb::{self, screen_request::Kind};
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;

use crate::util::{shipped_config, start_server};

/// `ScreenTextRequest` as raw bytes on the wire: the same field numbers, but `text` is
/// `bytes`, so a test can send what no well-behaved client can (invalid UTF-8).
#[derive(Clone, PartialEq, prost::Message)]
struct RawScreenTextRequest {
    #[prost(string, tag = "1")]
    tenant_id: String,
    #[prost(int32, tag = "3")]
    speaker: i32,
    #[prost(bytes = "vec", tag = "4")]
    text: Vec<u8>,
}

fn text_request(tenant: &str, speaker: i32, text: String) -> pb::ScreenTextRequest {
    pb::ScreenTextRequest {
        tenant_id: tenant.into(),
        channel: pb::Channel::Chat.into(),
        speaker,
        text,
    }
}

/// Thousands of malformed requests over real gRPC each get an error status (never OK, never a
/// dropped connection), and afterwards the service still screens correctly.
#[tokio::test]
async fn malformed_requests_are_refused_and_the_service_keeps_screening() {
    let server = start_server(shipped_config()).await;
    let mut client = server.screening().await;
    let customer = pb::Speaker::Customer as i32;
    let mut refused = 0;

    // ScreenText: missing tenant, giant text, unknown speaker, giant tenant id.
    let bad_texts = [
        text_request("", customer, "死ね".into()),
        text_request("t", customer, "あ".repeat(5000)),
        text_request("t", 99, "死ね".into()),
        text_request(&"t".repeat(500), customer, "死ね".into()),
    ];
    for round in 0..250 {
        for request in &bad_texts {
            let err = client.screen_text(request.clone()).await.expect_err("refused");
            assert_eq!(err.code(), Code::InvalidArgument, "help: round {round}: {err:?}");
            refused += 1;
        }
    }

    // Invalid UTF-8 in a string field, sent raw: refused by decoding, connection intact.
    let mut raw = tonic::client::Grpc::new(
        tonic::transport::Channel::from_shared(server.endpoint())
            .expect("uri")
            .connect()
            .await
            .expect("connect"),
    );
    for bytes in [vec![0xff, 0xfe, 0xfd], vec![0xe6, 0xad], b"ok\xc3\x28".to_vec()] {
        raw.ready().await.expect("ready");
        let request =
            RawScreenTextRequest { tenant_id: "t".into(), speaker: customer, text: bytes };
        let path = PathAndQuery::from_static("/kasuhara.v1.ScreeningService/ScreenText");
        let codec =
            tonic_prost::ProstCodec::<RawScreenTextRequest, pb::ScreenTextResponse>::default();
        let err = raw.unary(tonic::Request::new(request), path, codec).await.expect_err("refused");
        assert_ne!(err.code(), Code::Ok);
        assert_ne!(err.code(), Code::Unavailable, "help: the server must not drop the connection");
        refused += 1;
    }

    // Screen streams: no start, two starts, an empty message, seq going backwards.
    let start = |id: &str| pb::ScreenRequest {
        kind: Some(Kind::Start(pb::ConversationStart {
            conversation_id: id.into(),
            tenant_id: "t".into(),
            channel: pb::Channel::Voice.into(),
            customer_id: "c".into(),
            queue: "q".into(),
            agent_id: "a".into(),
            started_at: None,
        })),
    };
    let segment = |seq: u64| pb::ScreenRequest {
        kind: Some(Kind::Segment(pb::Segment {
            seq,
            speaker: customer,
            text: "テレビが映らない".into(),
            is_final: true,
            start_ms: 0,
            end_ms: 1,
        })),
    };
    for round in 0..250 {
        let id = format!("bad-{round}");
        let cases: [(Vec<pb::ScreenRequest>, Code); 4] = [
            (vec![segment(1)], Code::FailedPrecondition),
            (vec![start(&id), start(&id)], Code::FailedPrecondition),
            (vec![start(&id), pb::ScreenRequest { kind: None }], Code::InvalidArgument),
            (vec![start(&id), segment(5), segment(3)], Code::InvalidArgument),
        ];
        for (requests, code) in cases {
            let mut responses = client
                .screen(tokio_stream::iter(requests))
                .await
                .expect("stream opens")
                .into_inner();
            let status = loop {
                match responses.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => {
                        panic!("round {round}: expected {code:?}, the stream ended cleanly")
                    }
                    Err(status) => break status,
                }
            };
            assert_eq!(status.code(), code, "help: round {round}: {status:?}");
            refused += 1;
        }
    }
    assert!(refused >= 2000, "help: {refused} malformed requests tried");

    // Still screening, and correctly.
    let ok = client
        .screen_text(text_request("t", customer, "おいてめえぶっ殺すぞ".into()))
        .await
        .expect("screens after the flood")
        .into_inner();
    assert!(ok.alerts.iter().any(|a| a.category == pb::Category::Attack as i32), "help: {ok:?}");
    let benign = client
        .screen_text(text_request("t", customer, "テレビが映らないので見てください".into()))
        .await
        .expect("screens")
        .into_inner();
    assert!(benign.alerts.is_empty());
    server.stop().await.expect("clean stop");
}
