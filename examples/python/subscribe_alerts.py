#!/usr/bin/env python3
"""Subscribe to a tenant's alerts (AlertService.Subscribe) and print each event as JSON.

    python3 subscribe_alerts.py --addr 127.0.0.1:50051 --tenant t1 --min-severity HIGH

Runs until interrupted, or until --summaries conversation summaries have arrived. The line
"subscribed" goes to stderr once the server has accepted the subscription, so a script can
start producing only after it.
"""

import argparse
import json
import os
import sys

import grpc
from google.protobuf import json_format

from kasuhara_stubs import alerts_pb2, alerts_pb2_grpc, types_pb2


def auth_metadata(token):
    """The bearer-token header (docs/security.md), or none when auth is off (loopback)."""
    return [("authorization", f"Bearer {token}")] if token else []


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051", help="server host:port")
    parser.add_argument("--tenant", default="example", help="tenant id")
    parser.add_argument(
        "--token",
        default=os.environ.get("KASUHARA_TOKEN"),
        help="bearer token when the server has authentication on (env KASUHARA_TOKEN)",
    )
    parser.add_argument(
        "--min-severity", choices=["LOW", "MEDIUM", "HIGH", "CRITICAL"], default=None
    )
    parser.add_argument(
        "--category", action="append", default=[], help="e.g. ATTACK; repeat for more"
    )
    parser.add_argument(
        "--summaries", type=int, default=0, help="exit after this many summaries (0: never)"
    )
    args = parser.parse_args()

    request = alerts_pb2.SubscribeRequest(
        tenant_id=args.tenant,
        min_severity=types_pb2.Severity.Value(f"SEVERITY_{args.min_severity}")
        if args.min_severity
        else types_pb2.SEVERITY_UNSPECIFIED,
        categories=[types_pb2.Category.Value(f"CATEGORY_{c}") for c in args.category],
    )
    summaries = 0
    with grpc.insecure_channel(args.addr) as channel:
        stub = alerts_pb2_grpc.AlertServiceStub(channel)
        events = stub.Subscribe(request, metadata=auth_metadata(args.token))
        try:
            # The response headers arrive once the server has registered the subscription.
            events.initial_metadata()
            print("subscribed", file=sys.stderr, flush=True)
            for event in events:
                print(json.dumps(json_format.MessageToDict(event), ensure_ascii=False), flush=True)
                if event.WhichOneof("kind") == "summary":
                    summaries += 1
                    if summaries == args.summaries:
                        events.cancel()
                        return
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.CANCELLED and summaries == args.summaries:
                return
            sys.exit(f"Subscribe ended: {error.code().name}: {error.details()}")
        except KeyboardInterrupt:
            events.cancel()


if __name__ == "__main__":
    main()
