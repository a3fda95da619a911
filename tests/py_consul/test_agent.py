"""py-consul, a real Consul client library, used as deploy tooling uses it
against laneway's embedded Consul agent API. Run by
tests/consul_agent.rs (py_consul_client_works_unchanged) with
LANEWAY_ADMIN=host:port (the admin listener) and UPSTREAM_PORT (a live
loopback port to register). Plain asserts; prints one closing line.
"""

import os
import threading
import time

import consul
from consul import Check

host, port = os.environ["LANEWAY_ADMIN"].rsplit(":", 1)
upstream = int(os.environ["UPSTREAM_PORT"])
c = consul.Consul(host=host, port=int(port))


def eventually(f, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f():
            return True
        time.sleep(0.05)
    return False


# Registration with an HTTP check that laneway runs.
assert c.agent.service.register(
    "web",
    service_id="web-1",
    address="127.0.0.1",
    port=upstream,
    tags=["primary"],
    meta={"version": "v1"},
    check=Check.http(f"http://127.0.0.1:{upstream}/health", interval="100ms", timeout="2s"),
)
assert c.agent.service.register(
    "web", service_id="web-2", address="127.0.0.1", port=upstream, tags=["canary"], meta={"version": "v2"}
)

services = c.agent.services()
assert set(services) == {"web-1", "web-2"}, services
assert services["web-1"]["Service"] == "web"
assert services["web-1"]["Port"] == upstream
assert c.agent.service_definition("web-2")["Tags"] == ["canary"]

# The HTTP check starts critical and passes once run.
assert eventually(lambda: c.agent.checks().get("service:web-1", {}).get("Status") == "passing"), c.agent.checks()

# Checks registered on their own, and TTL updates.
assert c.agent.check.register("beat", check=Check.ttl("1h"), check_id="web-2-beat", service_id="web-2")
assert c.agent.checks()["web-2-beat"]["Status"] == "critical"
assert c.agent.check.ttl_pass("web-2-beat", notes="alive")
beat = c.agent.checks()["web-2-beat"]
assert (beat["Status"], beat["Output"]) == ("passing", "alive"), beat

# Catalog and health, with the index header.
index, catalog = c.catalog.services()
assert int(index) >= 1
assert sorted(catalog["web"]) == ["canary", "primary"], catalog
index, nodes = c.catalog.service("web")
assert {n["ServiceID"] for n in nodes} == {"web-1", "web-2"}, nodes
index, entries = c.health.service("web", passing=True)
assert {e["Service"]["ID"] for e in entries} == {"web-1", "web-2"}, entries
index, tagged = c.health.service("web", tag="canary")
assert [e["Service"]["ID"] for e in tagged] == ["web-2"], tagged
index, checks = c.health.checks("web")
assert {ch["CheckID"] for ch in checks} == {"service:web-1", "web-2-beat"}, checks
me = c.agent.self()
assert me["Config"]["Datacenter"] == "dc1", me
assert me["Config"]["NodeName"], me

# A TCP check on the live port passes.
assert c.agent.check.register(
    "web-2-tcp", check=Check.tcp("127.0.0.1", upstream, "100ms"), check_id="web-2-tcp", service_id="web-2"
)
assert eventually(lambda: c.agent.checks().get("web-2-tcp", {}).get("Status") == "passing"), c.agent.checks()
assert c.agent.check.deregister("web-2-tcp")

leader = c.status.leader()
assert leader == f"{host}:{port}", leader
assert c.status.peers() == [leader]

# Maintenance takes web-2 out of the passing set and back.
assert c.agent.service.maintenance("web-2", True, reason="deploying")
index, entries = c.health.service("web", passing=True)
assert [e["Service"]["ID"] for e in entries] == ["web-1"], entries
assert c.agent.service.maintenance("web-2", False)
index, entries = c.health.service("web", passing=True)
assert len(entries) == 2, entries

# A blocking query returns when the catalog changes.
index, _ = c.health.service("web")
result = {}


def blocked():
    result["answer"] = c.health.service("web", index=index, wait="30s")


t = threading.Thread(target=blocked)
t.start()
assert c.agent.service.register("web", service_id="web-3", address="127.0.0.1", port=upstream)
t.join(60)
assert not t.is_alive(), "the blocking query did not return"
new_index, entries = result["answer"]
assert int(new_index) > int(index), (new_index, index)
assert "web-3" in {e["Service"]["ID"] for e in entries}, entries

# Deregistration, and Consul's answer for an unknown id.
assert c.agent.check.deregister("web-2-beat")
assert "web-2-beat" not in c.agent.checks()
assert c.agent.service.deregister("web-3")
assert c.agent.service.deregister("web-3") is False  # 404, as Consul
assert "web-3" not in c.agent.services()

print("py-consul: all checks passed")
