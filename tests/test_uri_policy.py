"""The URI policy: files stay inside their roots, network URIs stay away from cloud
metadata and other denied networks (and, when asked, from private networks), and no
reason leaks a password.
No test needs the network: names resolve to loopback ("localhost") or through a
stubbed resolver."""

from __future__ import annotations

import json
import os
import socket

import pytest

from pipeline.core.config import ConfigError, UriPolicyConfig, load_config
from pipeline.ingest.egress.uri_policy import DEFAULT_DENY_NETWORKS, HostUnresolved, UriPolicy, UriRefused, redact


def _refusal(policy: UriPolicy, uri: str) -> str:
    with pytest.raises(UriRefused) as caught:
        policy.check(uri)
    reason = caught.value.reason
    assert reason == str(caught.value)
    assert "\n" not in reason and "\r" not in reason
    return reason


def _stub_resolver(monkeypatch, addresses_by_host: dict[str, list[str]]):
    def getaddrinfo(host, port, *args, **kwargs):
        if host not in addresses_by_host:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0))
            for a in addresses_by_host[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def media_root(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    (root / "clip.mp4").write_bytes(b"")
    (root / "my clip.mp4").write_bytes(b"")
    return root


# --- files -------------------------------------------------------------------


def test_file_inside_a_root_is_opened_by_its_absolute_path(media_root, monkeypatch):
    policy = UriPolicy(file_roots=(str(media_root),))
    clip = os.path.realpath(media_root / "clip.mp4")
    assert policy.check(str(media_root / "clip.mp4")) == clip
    monkeypatch.chdir(media_root)
    assert policy.check("clip.mp4") == clip
    assert policy.check("./sub/../clip.mp4") == clip


def test_file_uris_become_paths(media_root):
    policy = UriPolicy(file_roots=(str(media_root),))
    real_root = os.path.realpath(media_root)
    assert policy.check(f"file://{media_root}/clip.mp4") == os.path.join(real_root, "clip.mp4")
    assert policy.check(f"file://localhost{media_root}/clip.mp4") == os.path.join(real_root, "clip.mp4")
    assert policy.check(f"FILE://{media_root}/my%20clip.mp4") == os.path.join(real_root, "my clip.mp4")


def test_file_outside_roots_is_refused_even_through_dotdot_and_symlinks(tmp_path, media_root):
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"")
    (media_root / "escape.mp4").symlink_to(secret)
    (media_root / "up").symlink_to(tmp_path)
    sibling = tmp_path / "media-other"  # shares the root's name as a prefix
    sibling.mkdir()
    (sibling / "clip.mp4").write_bytes(b"")
    policy = UriPolicy(file_roots=(str(media_root),))

    for uri in (
        str(secret),
        f"{media_root}/../secret.mp4",
        f"file://{media_root}/../secret.mp4",
        f"file://{media_root}/%2E%2E/secret.mp4",
        str(media_root / "escape.mp4"),
        str(media_root / "up" / "secret.mp4"),
        str(sibling / "clip.mp4"),
        "/etc/passwd",
    ):
        reason = _refusal(policy, uri)
        assert "is outside the file roots" in reason, uri
        assert str(media_root) in reason


def test_symlinks_that_stay_inside_a_root_are_followed(tmp_path, media_root):
    (media_root / "alias.mp4").symlink_to(media_root / "clip.mp4")
    linked_root = tmp_path / "linked-media"
    linked_root.symlink_to(media_root)
    clip = os.path.realpath(media_root / "clip.mp4")

    assert UriPolicy(file_roots=(str(media_root),)).check(str(media_root / "alias.mp4")) == clip
    # A root given through a symlink admits the files it points at.
    assert UriPolicy(file_roots=(str(linked_root),)).check(str(media_root / "clip.mp4")) == clip


def test_without_file_roots_every_file_is_refused(media_root):
    policy = UriPolicy()
    assert _refusal(policy, str(media_root / "clip.mp4")) == "no file roots are configured"
    assert _refusal(policy, f"file://{media_root}/clip.mp4") == "no file roots are configured"


def test_file_uri_naming_another_host_or_with_a_query_is_refused(media_root):
    policy = UriPolicy(file_roots=(str(media_root),))
    assert "only local files" in _refusal(policy, f"file://fileserver{media_root}/clip.mp4")
    assert "query or fragment" in _refusal(policy, f"file://{media_root}/clip.mp4#/../../etc/passwd")


def test_files_are_refused_when_the_file_scheme_is_not_allowed(media_root):
    policy = UriPolicy(allowed_schemes=("rtsp",), file_roots=(str(media_root),))
    assert _refusal(policy, str(media_root / "clip.mp4")) == "scheme 'file' is not allowed (allowed: rtsp)"


# --- schemes -----------------------------------------------------------------


@pytest.mark.parametrize("uri, scheme", [
    ("ftp://example.com/a.mp4", "ftp"),
    ("concat:/srv/a.mp4|/etc/passwd", "concat"),
    ("pipe:0", "pipe"),
    ("data:video/mp4;base64,AAAA", "data"),
    ("hls+http://example.com/a.m3u8", "hls+http"),
    ("gopher://example.com/", "gopher"),
])
def test_scheme_must_be_allowed(uri, scheme, media_root):
    # A root is configured so that "file" fallbacks would have succeeded.
    policy = UriPolicy(file_roots=(str(media_root),))
    assert _refusal(policy, uri) == (
        f"scheme '{scheme}' is not allowed (allowed: file, http, https, rtsp, rtmp, srt)")


def test_schemes_are_compared_without_case():
    assert UriPolicy().check("HTTP://93.184.216.34/a.mp4") == "HTTP://93.184.216.34/a.mp4"
    assert UriPolicy(allowed_schemes=["RTSP"]).check("rtsp://93.184.216.34/s") == "rtsp://93.184.216.34/s"


@pytest.mark.parametrize("uri, reason", [
    ("", "uri is empty"),
    ("   ", "uri is empty"),
    ("http://93.184.216.34/a\r\nX-Injected: 1", "uri contains control characters"),
    ("/srv/a\x00.mp4", "uri contains control characters"),
    ("http:///a.mp4", "uri has no host"),
    ("srt://:9000?mode=listener", "uri has no host"),
    ("http://[::1/a.mp4", "uri is not a valid URL"),
])
def test_empty_broken_and_hostless_uris_are_refused(uri, reason):
    assert _refusal(UriPolicy(), uri) == reason


# --- network -----------------------------------------------------------------


def test_network_uris_to_public_and_private_hosts_pass_unchanged_by_default():
    policy = UriPolicy()
    for uri in (
        "rtsp://10.0.0.5:554/stream1",
        "http://192.168.1.20/live.m3u8",
        "https://93.184.216.34/a.mp4?token=abc",
        "rtmp://[2001:db8::5]/live/key",
        "srt://127.0.0.1:9000",
    ):
        assert policy.check(uri) == uri


@pytest.mark.parametrize("uri", [
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.169.254:80/",
    "http://169.254.169.254./",
    "http://2852039166/",
    "http://0xA9FEA9FE/",
    "http://0xa9.0xfe.0xa9.0xfe/",
    "http://0251.0376.0251.0376/",
    "http://169.254.43518/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "https://good.example@169.254.169.254/",
    "http://169.254.169.254#@good.example/",
    "rtsp://admin:pw@169.254.169.254:554/stream",
])
def test_cloud_metadata_address_is_refused_in_every_spelling(uri):
    reason = _refusal(UriPolicy(), uri)
    assert "169.254.169.254" in reason
    assert "link-local" in reason


def test_link_local_and_aws_ipv6_metadata_addresses_are_refused():
    policy = UriPolicy()
    assert _refusal(policy, "http://[fd00:ec2::254]/") == "address fd00:ec2::254 is the cloud metadata address"
    assert "link-local" in _refusal(policy, "http://[fe80::1]/")
    assert "link-local" in _refusal(policy, "rtsp://169.254.10.20/stream")


@pytest.mark.parametrize("uri", [
    "http://metadata/computeMetadata/v1/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://METADATA.Google.Internal./",
    "http://instance-data:80/latest/",
    "http://x.metadata.google.internal/",
])
def test_denied_hosts_are_refused_in_any_case_and_spelling(uri, monkeypatch):
    _stub_resolver(monkeypatch, {})  # the deny list must win before any lookup
    assert _refusal(UriPolicy(), uri).endswith("is denied")


def test_private_and_loopback_addresses_are_refused_when_private_networks_are_disallowed():
    policy = UriPolicy(allow_private_networks=False)
    for uri in (
        "rtsp://10.0.0.5/stream1",
        "http://192.168.1.20/",
        "http://172.16.0.1/",
        "http://127.0.0.1/",
        "http://127.1/",
        "http://[::1]/",
        "http://0.0.0.0/",
        "http://0/",
        "http://[fc00::1]/",
        "http://100.64.0.1/",  # carrier-grade NAT: not the public internet either
    ):
        assert "private networks are not allowed" in _refusal(policy, uri), uri
    assert policy.check("http://93.184.216.34/a.mp4") == "http://93.184.216.34/a.mp4"


def test_localhost_is_refused_only_when_private_networks_are_disallowed():
    assert UriPolicy().check("rtsp://localhost:8554/cam") == "rtsp://localhost:8554/cam"
    reason = _refusal(UriPolicy(allow_private_networks=False), "rtsp://localhost:8554/cam")
    assert reason.startswith("host 'localhost' resolves to ")
    assert "private networks are not allowed" in reason


def test_a_name_that_resolves_to_a_metadata_address_is_refused(monkeypatch):
    _stub_resolver(monkeypatch, {
        "rebind.example": ["93.184.216.34", "169.254.169.254"],
        "mapped.example": ["::ffff:169.254.169.254"],
        "aws6.example": ["fd00:ec2::254"],
        "good.example": ["93.184.216.34", "2001:db8::1"],
    })
    policy = UriPolicy()
    assert _refusal(policy, "http://rebind.example/") == (
        "host 'rebind.example' resolves to 169.254.169.254, a link-local address (where cloud metadata lives)")
    assert "169.254.169.254" in _refusal(policy, "http://mapped.example/")
    assert "cloud metadata address" in _refusal(policy, "http://aws6.example/")
    assert policy.check("http://good.example/") == "http://good.example/"


def test_a_name_that_does_not_resolve_is_left_for_pyav_to_report(monkeypatch):
    _stub_resolver(monkeypatch, {})
    strict = UriPolicy(allow_private_networks=False)
    assert strict.check("rtsp://camera.invalid/stream") == "rtsp://camera.invalid/stream"


# --- credentials -------------------------------------------------------------


def test_credentials_are_allowed_for_cameras():
    uri = "rtsp://admin:s3cret@10.0.0.5:554/stream1"
    assert UriPolicy().check(uri) == uri


def test_password_never_appears_in_a_reason(monkeypatch):
    _stub_resolver(monkeypatch, {"cam.example": ["10.0.0.5"]})
    strict = UriPolicy(allow_private_networks=False)
    for policy, uri in (
        (UriPolicy(), "http://admin:s3cret@169.254.169.254/"),
        (UriPolicy(), "http://admin:s3cret@0xA9FEA9FE/"),
        (UriPolicy(), "http://admin:s3cret@metadata.google.internal/"),
        (UriPolicy(), "ftp://admin:s3cret@example.com/a.mp4"),
        (UriPolicy(), "http://admin:s3cret@/a.mp4"),
        (strict, "rtsp://admin:s3cret@10.0.0.5/stream1"),
        (strict, "rtsp://admin:s3cret@cam.example/stream1"),
    ):
        reason = _refusal(policy, uri)
        assert "s3cret" not in reason, (uri, reason)


@pytest.mark.parametrize("uri, shown", [
    ("rtsp://admin:s3cret@10.0.0.5:554/stream1", "rtsp://admin:***@10.0.0.5:554/stream1"),
    ("rtsp://admin:p@ss:w@rd@cam/s?x=1#f", "rtsp://admin:***@cam/s?x=1#f"),
    ("http://:s3cret@host/", "http://:***@host/"),
    ("rtsp://admin@cam/stream1", "rtsp://admin@cam/stream1"),
    ("http://host/a@b:c", "http://host/a@b:c"),
    ("/srv/media/a:b@c.mp4", "/srv/media/a:b@c.mp4"),
])
def test_redact_hides_passwords_and_nothing_else(uri, shown):
    assert redact(uri) == shown


# --- networks as data --------------------------------------------------------


def test_denied_networks_are_refused_and_the_longest_match_decides():
    policy = UriPolicy(deny_networks=("127.0.0.0/8", "10.0.0.5/32"), allow_networks=("127.0.0.1/32", "10.0.0.0/8"))
    assert policy.check("http://127.0.0.1:8080/a.mp4") == "http://127.0.0.1:8080/a.mp4"  # allow /32 beats deny /8
    assert _refusal(policy, "http://127.0.0.2/a.mp4") == "address 127.0.0.2 is in denied network 127.0.0.0/8"
    assert _refusal(policy, "rtsp://10.0.0.5/s") == "address 10.0.0.5 is in denied network 10.0.0.5/32"
    assert policy.check("rtsp://10.0.0.6/s") == "rtsp://10.0.0.6/s"
    tie = UriPolicy(deny_networks=("127.0.0.2/32",), allow_networks=("127.0.0.2/32",))
    assert "denied network" in _refusal(tie, "http://127.0.0.2/")


def test_allow_networks_admit_cameras_when_private_networks_are_disallowed():
    policy = UriPolicy(allow_private_networks=False, allow_networks=("10.1.2.0/24",))
    assert policy.check("rtsp://10.1.2.7/stream1") == "rtsp://10.1.2.7/stream1"
    assert "private networks are not allowed" in _refusal(policy, "rtsp://10.1.3.7/stream1")


def test_an_allow_list_is_a_deny_of_everything_plus_allowed_networks():
    policy = UriPolicy(deny_networks=("0.0.0.0/0", "::/0"), allow_networks=("203.0.113.0/24",))
    assert policy.check("https://203.0.113.10/a.m3u8") == "https://203.0.113.10/a.m3u8"
    assert _refusal(policy, "https://198.51.100.1/") == "address 198.51.100.1 is in denied network 0.0.0.0/0"
    assert "denied network ::/0" in _refusal(policy, "https://[2001:db8::1]/")


@pytest.mark.parametrize("uri", [
    "http://[64:ff9b:1::a9fe:a9fe]/",  # local-use NAT64 prefix (RFC 8215)
    "http://[2002:a9fe:a9fe::1]/",  # 6to4
    "http://[::ffff:a9fe:1]/",
])
def test_default_deny_networks_cover_link_local_in_its_ipv6_spellings(uri):
    assert "link-local" in _refusal(UriPolicy(), uri)


def test_default_deny_networks_are_replaced_not_merged_when_configured():
    # Configuring deny_networks is the whole list: keep the defaults in it.
    policy = UriPolicy(deny_networks=("127.0.0.2/32",))
    assert policy.check("http://169.254.169.254/") == "http://169.254.169.254/"
    assert _refusal(UriPolicy(deny_networks=(*DEFAULT_DENY_NETWORKS, "127.0.0.2/32")),
                    "http://169.254.169.254/").startswith("address 169.254.169.254 is a link-local")


def test_the_policy_follows_its_config():
    cfg = load_config(None, ['kafka.uri_policy.allow_networks=["127.0.0.1"]',
                             'kafka.uri_policy.deny_networks=["127.0.0.0/8", "169.254.0.0/16"]'], environ={})
    policy = UriPolicy.from_config(cfg.kafka.uri_policy)
    assert policy.check("http://127.0.0.1/") == "http://127.0.0.1/"
    assert "denied network 127.0.0.0/8" in _refusal(policy, "http://127.0.0.3/")
    assert UriPolicy.from_config(UriPolicyConfig()) == UriPolicy()


@pytest.mark.parametrize("networks", [["10.0.0.1/8"], ["not-a-network"], ["169.254.0.0/33"]])
def test_a_network_that_is_not_a_cidr_is_a_config_error(networks):
    with pytest.raises(ConfigError) as caught:
        load_config(None, [f"kafka.uri_policy.deny_networks={json.dumps(networks)}"], environ={})
    assert "deny_networks" in str(caught.value)


def test_check_host_returns_the_addresses_it_checked(monkeypatch):
    _stub_resolver(monkeypatch, {"cam.example": ["10.0.0.5", "10.0.0.6"]})
    policy = UriPolicy()
    assert [str(a) for a in policy.check_host("cam.example")] == ["10.0.0.5", "10.0.0.6"]
    assert [str(a) for a in policy.check_host("10.0.0.7")] == ["10.0.0.7"]
    with pytest.raises(HostUnresolved):
        policy.check_host("camera.invalid")
