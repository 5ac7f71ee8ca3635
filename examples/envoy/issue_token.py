"""Ask `authz serve` for a task token (authz.v1.Tokens/Issue) and print it: the bearer token of the Envoy example.

    python3 examples/envoy/issue_token.py --caller researcher --task t-1 --tool 'docs.*'

The caller names itself with `x-authz-caller`: development mode, which `authz serve` runs only on
loopback addresses. With identity configured the caller is proven instead (its own bearer JWT or
client certificate: docs/identity.md, docs/tokens.md).
"""
import argparse
import sys

import grpc

from authz._pb import tokens_pb2, tokens_pb2_grpc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:9191")
    parser.add_argument("--caller", required=True, help="the agent asking (development mode)")
    parser.add_argument("--task", required=True)
    parser.add_argument("--tool", action="append", required=True, help="a tool (pattern) the token may call")
    parser.add_argument("--ttl", type=int, default=600, help="seconds")
    args = parser.parse_args()
    scope = tokens_pb2.TokenScope(actions=['Action::"tools/call"'], resources=[f'Tool::"{t}"' for t in args.tool])
    with grpc.insecure_channel(args.server) as channel:
        try:
            answer = tokens_pb2_grpc.TokensStub(channel).Issue(
                tokens_pb2.IssueRequest(task=args.task, scope=scope, ttl_s=args.ttl),
                metadata=[("x-authz-caller", args.caller)], timeout=10)
        except grpc.RpcError as e:
            print(f"issue_token: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    print(answer.token.access_token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
