"""A Python client of Guard's audit API, generated from proto/ with
grpcio-tools at run time: it queries and follows a collector the way a
security team's own tooling would. Used by tests/tests/collector.rs.

Prints one JSON object per line:
  {"reflection": {"services": [...], "methods": [...], "entries": N}}
  {"query": [...], "bad_page_token": CODE, "bad_verdict": CODE}
  {"following": true}
  {"followed": [...]}
"""

import argparse
import importlib
import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc


def generate(proto_dir, out_dir):
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    files = [os.path.join(proto_dir, "guard/v1", f) for f in ("audit.proto",)]
    code = protoc.main(
        ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out_dir}",
         f"--grpc_python_out={out_dir}", *files]
    )
    if code != 0:
        sys.exit(f"protoc failed: {code}")
    sys.path.insert(0, out_dir)
    return (importlib.import_module("guard.v1.audit_pb2"),
            importlib.import_module("guard.v1.audit_pb2_grpc"))


def reflect(channel):
    """What a generic client learns from server reflection alone (v1alpha,
    the only version grpcio-reflection speaks), and a query made with the
    message types it learned."""
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
    database = ProtoReflectionDescriptorDatabase(channel)
    services = sorted(database.get_services())
    service = descriptor_pool.DescriptorPool(database).FindServiceByName(
        "guard.v1.AuditService")
    method = service.FindMethodByName("Query")
    request = message_factory.GetMessageClass(method.input_type)
    response = message_factory.GetMessageClass(method.output_type)
    query = channel.unary_unary(
        f"/{service.full_name}/{method.name}",
        request_serializer=request.SerializeToString,
        response_deserializer=response.FromString)
    page = query(request(page_size=5))
    return {"services": services,
            "methods": sorted(m.name for m in service.methods),
            "entries": len(page.entries)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--proto", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--follow", type=int, required=True,
                        help="records to follow before exiting")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        pb, rpc = generate(args.proto, out)
        channel = grpc.insecure_channel(args.server)
        print(json.dumps({"reflection": reflect(channel)}), flush=True)
        stub = rpc.AuditServiceStub(channel)
        denials = pb.Filter(agents=["coder"], verdicts=[pb.VERDICT_DENY])

        seqs, token = [], ""
        while True:
            page = stub.Query(pb.QueryRequest(filter=denials, page_size=4,
                                              page_token=token))
            seqs += [e.record.seq for e in page.entries
                     if e.WhichOneof("entry") == "record"]
            token = page.next_page_token
            if not token:
                break
        codes = {}
        for name, request in [
            ("bad_page_token", pb.QueryRequest(page_token="not-a-token")),
            ("bad_verdict", pb.QueryRequest(filter=pb.Filter(verdicts=[42]))),
        ]:
            try:
                stub.Query(request)
                codes[name] = "OK"
            except grpc.RpcError as e:
                codes[name] = e.code().name
        print(json.dumps({"query": seqs, **codes}), flush=True)

        call = stub.Follow(pb.FollowRequest(filter=denials), timeout=60)
        call.initial_metadata()  # the server has subscribed
        print(json.dumps({"following": True}), flush=True)
        followed = []
        for entry in call:
            if entry.WhichOneof("entry") == "record":
                record = entry.record
                assert record.agent == "coder" and record.verdict == pb.VERDICT_DENY
                assert record.host and record.json.startswith('{"seq":')
                followed.append(record.seq)
            if len(followed) == args.follow:
                break
        call.cancel()
        print(json.dumps({"followed": followed}), flush=True)


if __name__ == "__main__":
    main()
