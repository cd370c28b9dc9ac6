"""The files in dbus/ are the contract: the running service must match the
introspection XML, and the policy files must parse, validate and say what
DESIGN §5 says."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
from dbus_next import introspection as intr

from kexechibd.busapi import BUS_NAME, INTERFACE, OBJECT_PATH
from kexechibd.daemon.auth import Action
from kexechibd.daemon.routing import METHODS
from tests.dbus.buses import POLICY_CONF, POLKIT_POLICY, REPO, TestBus
from tests.dbus.conftest import run

CONTRACT = REPO / "dbus" / "org.kexechib1.xml"
ACTIVATION = REPO / "dbus" / "org.kexechib1.service"


def interface_model(xml: str, name: str) -> dict[str, object]:
    """What an introspected interface promises, independent of formatting."""
    node = ET.fromstring(xml)
    (iface,) = [i for i in node.findall("interface") if i.get("name") == name]

    def args(member: ET.Element, default_direction: str) -> list[tuple[str, str, str]]:
        return [
            (a.get("direction", default_direction), a.get("type", ""), a.get("name", ""))
            for a in member.findall("arg")
        ]

    return {
        "methods": {m.get("name"): args(m, "in") for m in iface.findall("method")},
        # A signal's arguments are all "out"; the direction attribute is optional.
        "signals": {
            s.get("name"): [(t, n) for _, t, n in args(s, "out")] for s in iface.findall("signal")
        },
        "properties": {
            p.get("name"): (p.get("type"), p.get("access")) for p in iface.findall("property")
        },
        "annotations": {a.get("name"): a.get("value") for a in iface.iter("annotation")},
    }


def interface_names(xml: str) -> set[str]:
    return {i.get("name") for i in ET.fromstring(xml).findall("interface")}


async def test_the_running_service_matches_the_contract(daemon, system_bus):
    result = await run(
        [
            "gdbus",
            "introspect",
            "--system",
            "--dest",
            BUS_NAME,
            "--object-path",
            OBJECT_PATH,
            "--xml",
        ],
        env=system_bus.env(),
    )
    assert result.returncode == 0, result.stderr
    contract = CONTRACT.read_text()
    assert interface_model(result.stdout, INTERFACE) == interface_model(contract, INTERFACE)
    assert interface_names(result.stdout) >= {
        INTERFACE,
        "org.freedesktop.DBus.Introspectable",
        "org.freedesktop.DBus.Properties",
        "org.freedesktop.DBus.Peer",
    }


async def test_peer_ping_is_answered(daemon, system_bus):
    result = await run(
        [
            "busctl",
            f"--address={system_bus.address}",
            "call",
            BUS_NAME,
            OBJECT_PATH,
            "org.freedesktop.DBus.Peer",
            "Ping",
        ]
    )
    assert result.returncode == 0, result.stderr


def test_the_contract_is_valid_introspection():
    node = intr.Node.parse(CONTRACT.read_text())  # validates names and signatures
    (iface,) = node.interfaces
    assert iface.name == INTERFACE
    assert {m.name for m in iface.methods} == set(METHODS)


# ------------------------------------------------------------------ bus policy


def _policies():
    root = ET.parse(POLICY_CONF).getroot()
    assert root.tag == "busconfig"
    return {(p.get("user"), p.get("context")): p for p in root.findall("policy")}


def test_the_bus_policy_lets_only_root_own_the_name():
    policies = _policies()
    owners = [
        (key, rule.get("own"))
        for key, p in policies.items()
        for rule in p
        if rule.tag == "allow" and rule.get("own")
    ]
    assert owners == [(("root", None), BUS_NAME)]


def test_the_bus_policy_opens_exactly_the_public_methods_and_property_reads():
    default = _policies()[(None, "default")]
    allowed: dict[str, set[str | None]] = {}
    for rule in default.findall("allow"):
        assert rule.get("send_destination") == BUS_NAME
        allowed.setdefault(rule.get("send_interface"), set()).add(rule.get("send_member"))
    assert allowed == {
        INTERFACE: set(METHODS),
        "org.freedesktop.DBus.Properties": {"Get", "GetAll"},
        "org.freedesktop.DBus.Introspectable": {None},
        "org.freedesktop.DBus.Peer": {None},
    }
    (deny,) = default.findall("deny")
    assert deny.attrib == {"send_destination": BUS_NAME}


def test_dbus_daemon_accepts_the_policy_and_rejects_a_broken_one(tmp_path):
    TestBus(includes=(POLICY_CONF,)).stop()
    broken = tmp_path / "broken.conf"
    broken.write_text(
        POLICY_CONF.read_text().replace(
            '<allow own="org.kexechib1"/>', '<alow own="org.kexechib1"/>'
        )
    )
    broken.chmod(0o644)
    with pytest.raises(RuntimeError, match="alow"):
        TestBus(includes=(broken,)).stop()


def test_activation_goes_through_systemd():
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(ACTIVATION)
    service = dict(parser["D-BUS Service"])
    assert service == {
        "Name": BUS_NAME,
        "Exec": "/bin/false",
        "User": "root",
        "SystemdService": "kexechibd.service",
    }
    unit = (REPO / "systemd" / "kexechibd.service").read_text()
    assert f"BusName={BUS_NAME}" in unit


# ------------------------------------------------------------------ polkit


def test_the_polkit_policy_validates_against_polkits_dtd():
    dtd = "/usr/share/polkit-1/policyconfig-1.dtd"
    if shutil.which("xmllint") is None:
        pytest.skip(reason="xmllint is missing (Debian package libxml2-utils)")
    result = subprocess.run(
        ["xmllint", "--noout", "--dtdvalid", dtd, str(POLKIT_POLICY)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_polkit_policy_has_an_action_for_each_authorization_the_daemon_asks():
    ids = {a.get("id") for a in ET.parse(POLKIT_POLICY).getroot().findall("action")}
    assert ids == {a.value for a in Action}


@pytest.mark.parametrize(
    "action, implicit",
    [
        ("org.kexechib1.hibernate", ("auth_admin_keep", "auth_admin_keep", "yes")),
        ("org.kexechib1.hibernate-other-image", ("auth_admin_keep",) * 3),
        ("org.kexechib1.resume", ("auth_admin_keep",) * 3),
        ("org.kexechib1.jump-back", ("auth_admin_keep",) * 3),
        ("org.kexechib1.cancel", ("auth_admin_keep",) * 3),
        ("org.kexechib1.inspect", ("auth_admin_keep",) * 3),
    ],
)
async def test_polkitd_loads_the_actions_with_the_designed_defaults(
    system_bus, real_polkit, action, implicit
):
    result = await run(["pkaction", "--verbose", "--action-id", action], env=system_bus.env())
    assert result.returncode == 0, result.stderr
    lines = dict(
        line.strip().split(":", 1)
        for line in result.stdout.splitlines()
        if line.strip().startswith("implicit")
    )
    assert (
        lines["implicit any"].strip(),
        lines["implicit inactive"].strip(),
        lines["implicit active"].strip(),
    ) == implicit
