#!/usr/bin/env python3
"""Stream a transcript file through ScreeningService.Screen and print what comes back.

The transcript is plain text, one segment per line, each starting with who spoke:

    C: 商品が壊れていたんですけど
    A: 大変申し訳ございません。
    C: 土下座しろ

("C:" customer, "A:" agent; blank lines and lines starting with # are skipped.) Every
response (verdicts, alert updates and the closing summary) is printed as one JSON line.

    python3 screen_transcript.py --addr 127.0.0.1:50051 --tenant t1 transcript.txt
    echo 'C: 土下座しろ' | python3 screen_transcript.py --tenant t1 -
"""

import argparse
import json
import os
import sys
import uuid

import grpc
from google.protobuf import json_format

from kasuhara_stubs import screening_pb2, screening_pb2_grpc, types_pb2

SPEAKERS = {"C": types_pb2.SPEAKER_CUSTOMER, "A": types_pb2.SPEAKER_AGENT}


def parse_transcript(lines):
    """Yields (speaker, text) per segment line; raises ValueError naming a bad line."""
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        who, sep, text = line.partition(":")
        if not sep or who.strip() not in SPEAKERS:
            raise ValueError(f"line {number}: expected 'C: text' or 'A: text'")
        yield SPEAKERS[who.strip()], text.strip()


def requests(tenant, conversation_id, segments):
    """The Screen stream: start, one Segment per line (2 s apart in call time), end."""
    yield screening_pb2.ScreenRequest(
        start=screening_pb2.ConversationStart(
            conversation_id=conversation_id, tenant_id=tenant, channel=types_pb2.CHANNEL_VOICE
        )
    )
    for seq, (speaker, text) in enumerate(segments, start=1):
        yield screening_pb2.ScreenRequest(
            segment=screening_pb2.Segment(
                seq=seq,
                speaker=speaker,
                text=text,
                is_final=True,
                start_ms=(seq - 1) * 2000,
                end_ms=seq * 2000 - 200,
            )
        )
    yield screening_pb2.ScreenRequest(end=screening_pb2.ConversationEnd())


def auth_metadata(token):
    """The bearer-token header (docs/security.md), or none when auth is off (loopback)."""
    return [("authorization", f"Bearer {token}")] if token else []


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("transcript", help="transcript file, or - for stdin")
    parser.add_argument("--addr", default="127.0.0.1:50051", help="server host:port")
    parser.add_argument("--tenant", default="example", help="tenant id")
    parser.add_argument(
        "--token",
        default=os.environ.get("KASUHARA_TOKEN"),
        help="bearer token when the server has authentication on (env KASUHARA_TOKEN)",
    )
    parser.add_argument("--conversation-id", default=None, help="default: a random id")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for the call")
    args = parser.parse_args()

    source = sys.stdin if args.transcript == "-" else open(args.transcript, encoding="utf-8")
    with source:
        try:
            segments = list(parse_transcript(source))
        except ValueError as error:
            sys.exit(f"{args.transcript}: {error}")
    conversation_id = args.conversation_id or f"py-{uuid.uuid4().hex[:12]}"

    with grpc.insecure_channel(args.addr) as channel:
        stub = screening_pb2_grpc.ScreeningServiceStub(channel)
        try:
            for response in stub.Screen(
                requests(args.tenant, conversation_id, segments),
                timeout=args.timeout,
                metadata=auth_metadata(args.token),
            ):
                print(json.dumps(json_format.MessageToDict(response), ensure_ascii=False))
        except grpc.RpcError as error:
            sys.exit(f"Screen failed: {error.code().name}: {error.details()}")


if __name__ == "__main__":
    main()
