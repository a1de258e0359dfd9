#!/usr/bin/env python3
"""An xDS client Rampart did not write, to walk a control plane's ADS.

gRPC's C core (the `grpcio` package) speaks HTTP/2, Google's protobuf runtime decodes, and
Envoy's own .proto files are compiled here by grpc_tools' protoc: nothing is shared with
Rampart's Rust side but the wire. The walk checks what an Envoy relies on, State of the
World then Delta, and prints a JSON summary of what it was served; the first violation
exits with status 1 and says what it was.

Usage: xds_client.py --server HOST:PORT --proto-dir ENVOY_TYPES_PROTO_DIR [--node ID]
"""

import argparse
import json
import os
import queue
import sys
import tempfile
import threading

import grpc
import grpc_tools
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_tools import protoc

INCLUDES = [
    "data-plane-api",
    "xds",
    "protoc-gen-validate",
    "googleapis",
    "cel-spec/proto",
    "opentelemetry-proto",
    "client_model",
    "ratelimit",
]
ROOTS = [
    "envoy/service/discovery/v3/ads.proto",
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
]
PREFIX = "type.googleapis.com/"
CDS = PREFIX + "envoy.config.cluster.v3.Cluster"
EDS = PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = PREFIX + "envoy.config.listener.v3.Listener"
RDS = PREFIX + "envoy.config.route.v3.RouteConfiguration"
ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
WAIT = 5.0
QUIET = 1.0


class Violation(Exception):
    pass


def check(ok, what):
    if not ok:
        raise Violation(what)


def compile_protos(proto_dir):
    """Envoy's protos as a descriptor pool (protoc --include_imports)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "envoy.pb")
        args = ["protoc"]
        args += ["-I" + os.path.join(proto_dir, i) for i in INCLUDES]
        args += ["-I" + os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")]
        args += ["--include_imports", "--descriptor_set_out=" + out] + ROOTS
        check(protoc.main(args) == 0, "protoc could not compile Envoy's protos")
        with open(out, "rb") as f:
            files = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.Add(f)
    return pool


class Protos:
    def __init__(self, pool):
        self.pool = pool

    def cls(self, name):
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(name))

    def unpack(self, any_msg):
        check(any_msg.type_url.startswith(PREFIX), "a resource's type URL: " + any_msg.type_url)
        out = self.cls(any_msg.type_url[len(PREFIX):])()
        check(any_msg.Unpack(out), "a resource does not decode as " + any_msg.type_url)
        return out


class Stream:
    """One ADS stream: requests are queued, responses collected by a thread."""

    def __init__(self, channel, method, request_cls, response_cls):
        self.requests = queue.Queue()
        self.inbox = queue.Queue()
        call = channel.stream_stream(
            ADS + method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        self.call = call(iter(self.requests.get, None))
        self.request_cls = request_cls
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        try:
            for r in self.call:
                self.inbox.put(r)
        except grpc.RpcError as e:
            self.inbox.put(e)

    def send(self, **fields):
        self.requests.put(self.request_cls(**fields))

    def next(self, what):
        try:
            r = self.inbox.get(timeout=WAIT)
        except queue.Empty:
            raise Violation("no response in %.0f s: %s" % (WAIT, what))
        if isinstance(r, grpc.RpcError):
            if r.code() == grpc.StatusCode.CANCELLED:
                raise Violation("stream cancelled while waiting: " + what)
            raise Violation("the stream failed (%s): %s" % (r.code(), what))
        return r

    def quiet(self, what):
        """Nothing arrives for a while (an ACK must not be answered, a NACK not looped)."""
        try:
            r = self.inbox.get(timeout=QUIET)
        except queue.Empty:
            return
        raise Violation("%s, but got a response: %s" % (what, getattr(r, "type_url", r)))

    def close(self):
        self.requests.put(None)
        self.call.cancel()


def names_of(protos, resources):
    return sorted(protos.unpack(r).name for r in resources)


def sotw(channel, protos, node):
    """State of the World: wildcard CDS and LDS, then EDS and RDS by name, each ACKed."""
    s = Stream(
        channel,
        "StreamAggregatedResources",
        protos.cls("envoy.service.discovery.v3.DiscoveryRequest"),
        protos.cls("envoy.service.discovery.v3.DiscoveryResponse"),
    )
    Cluster = protos.cls("envoy.config.cluster.v3.Cluster")
    seen = {}

    def ask(type_url, names=(), answering=None, error=None):
        fields = dict(node=node, type_url=type_url, resource_names=list(names))
        if answering is not None:
            fields.update(version_info=answering.version_info, response_nonce=answering.nonce)
        if error is not None:
            fields["error_detail"] = error
        s.send(**fields)

    def walk(type_url, names=()):
        ask(type_url, names)
        r = s.next("the first " + type_url)
        check(r.type_url == type_url, "asked for %s, got %s" % (type_url, r.type_url))
        check(r.version_info != "" and r.nonce != "", "a response without version or nonce")
        got = names_of(protos, r.resources) if type_url != EDS else sorted(
            protos.unpack(a).cluster_name for a in r.resources
        )
        if names:
            check(got == sorted(names), "asked for %s, got %s" % (sorted(names), got))
        ask(type_url, names, answering=r)
        s.quiet("an ACK of " + type_url + " was answered")
        seen[type_url] = got
        return r

    cds = walk(CDS)
    eds_names = [
        c.name
        for c in (protos.unpack(a) for a in cds.resources)
        if c.type == Cluster.DiscoveryType.Value("EDS")
    ]
    check(eds_names, "no EDS cluster served")
    walk(EDS, eds_names)
    lds = walk(LDS)
    routes = sorted({route_config_of(protos, protos.unpack(a)) for a in lds.resources})
    rds = walk(RDS, routes)
    # A NACK: the previous version stays; the rejected one is not sent again.
    Status = protos.cls("google.rpc.Status")
    s.send(
        node=node,
        type_url=RDS,
        resource_names=routes,
        version_info="",
        response_nonce=rds.nonce,
        error_detail=Status(code=3, message="rejected by the test client"),
    )
    s.quiet("a NACK was answered with the same version again")
    s.close()
    return seen


def route_config_of(protos, listener):
    hcm_any = listener.filter_chains[0].filters[0].typed_config
    hcm = protos.unpack(hcm_any)
    check(hcm.HasField("rds"), "listener %s: routes not from RDS" % listener.name)
    check(hcm.rds.config_source.HasField("ads"), "listener %s: RDS not over ADS" % listener.name)
    check(hcm.http_filters[-1].name == "envoy.filters.http.router", "router not last")
    return hcm.rds.route_config_name


def delta(channel, protos, node):
    """Delta: wildcard CDS, EDS subscribe and unsubscribe, then a resume from held versions."""
    cls = (
        protos.cls("envoy.service.discovery.v3.DeltaDiscoveryRequest"),
        protos.cls("envoy.service.discovery.v3.DeltaDiscoveryResponse"),
    )
    s = Stream(channel, "DeltaAggregatedResources", *cls)
    s.send(node=node, type_url=CDS)
    cds = s.next("the first delta CDS")
    check(cds.type_url == CDS and cds.nonce != "", "a delta CDS response with a nonce")
    held = {r.name: r.version for r in cds.resources}
    check(all(held.values()), "a delta resource without a version")
    s.send(node=node, type_url=CDS, response_nonce=cds.nonce)
    s.quiet("a delta ACK was answered")
    eds_names = sorted(held)
    s.send(node=node, type_url=EDS, resource_names_subscribe=eds_names)
    eds = s.next("delta EDS after subscribing")
    got_eds = sorted(r.name for r in eds.resources)
    check(set(got_eds) <= set(eds_names), "EDS sent what was not subscribed: %s" % got_eds)
    s.send(node=node, type_url=EDS, response_nonce=eds.nonce)
    s.send(node=node, type_url=EDS, resource_names_unsubscribe=got_eds)
    s.quiet("an unsubscribe was answered")
    s.close()

    # A new stream resuming with what it holds, one version made stale: only that one comes.
    stale = sorted(held)[0]
    versions = dict(held)
    versions[stale] = "stale"
    r = Stream(channel, "DeltaAggregatedResources", *cls)
    r.send(node=node, type_url=CDS, initial_resource_versions=versions)
    again = r.next("the resumed delta CDS")
    resent = sorted(x.name for x in again.resources)
    check(resent == [stale], "a resume re-sent %s, not only the stale %s" % (resent, stale))
    r.close()
    return {"clusters": sorted(held), "eds": got_eds, "resumed": resent}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", required=True)
    p.add_argument("--proto-dir", required=True)
    p.add_argument("--node", default="python-client")
    a = p.parse_args()
    protos = Protos(compile_protos(a.proto_dir))
    node = protos.cls("envoy.config.core.v3.Node")(id=a.node, cluster="test")
    channel = grpc.insecure_channel(a.server)
    try:
        grpc.channel_ready_future(channel).result(timeout=WAIT)
        summary = {"sotw": sotw(channel, protos, node), "delta": delta(channel, protos, node)}
    except Violation as v:
        print("VIOLATION: %s" % v, file=sys.stderr)
        return 1
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
