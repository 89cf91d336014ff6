"""The dev PKI: real keys and certificates, checked with cryptography and openssl."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from quantmesh.cli.app import app
from quantmesh.mesh import pki

_Extension = TypeVar("_Extension", bound=x509.ExtensionType)

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def _text(output: str) -> str:
    # Rich wraps long messages to the terminal width; compare words, not line breaks.
    return " ".join(output.split())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _extension(certificate: x509.Certificate, kind: type[_Extension]) -> _Extension:
    return certificate.extensions.get_extension_for_class(kind).value


def _write_user_ca(
    folder: Path, *, ca: bool = True
) -> tuple[Path, Path, ec.EllipticCurvePrivateKey]:
    """A CA (or, with ``ca=False``, a plain certificate) made the way a user's tooling would."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme corp root")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA384())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "root.pem", folder / "root-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, key


# --------------------------------------------------------------------------- identities


def test_spiffe_id_is_under_the_trust_domain() -> None:
    assert pki.spiffe_id("risk") == "spiffe://quantmesh.local/risk"


@pytest.mark.parametrize("bad", ["", "../etc", "Risk", "a/b", "-x", "a..b"])
def test_spiffe_id_rejects_names_that_are_not_safe_folder_names(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid service name"):
        pki.spiffe_id(bad)


# --------------------------------------------------------------------------- the dev CA


def test_dev_ca_is_a_self_signed_ca_that_can_only_sign_leaves() -> None:
    ca = pki.create_dev_ca(now=NOW)
    certificate = ca.certificate

    constraints = _extension(certificate, x509.BasicConstraints)
    usage = _extension(certificate, x509.KeyUsage)
    assert constraints.ca is True
    assert constraints.path_length == 0
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert not usage.digital_signature
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "quantmesh dev CA"
    )
    assert certificate.issuer == certificate.subject
    certificate.verify_directly_issued_by(certificate)
    assert isinstance(ca.private_key, ec.EllipticCurvePrivateKey)
    assert ca.private_key.curve.name == "secp256r1"
    assert certificate.not_valid_after_utc - NOW == timedelta(days=365)
    assert _extension(certificate, x509.AuthorityKeyIdentifier).key_identifier == (
        _extension(certificate, x509.SubjectKeyIdentifier).digest
    )
    assert ca.owned


# --------------------------------------------------------------------------- issuing


def test_service_certificate_is_a_24h_svid_signed_by_the_ca() -> None:
    ca = pki.create_dev_ca(now=NOW)
    issued = pki.issue_service_certificate(ca, "execution", now=NOW)
    certificate = issued.certificate

    # The signature checks out with the CA's public key, and nothing but that key.
    ca_public_key = ca.certificate.public_key()
    assert isinstance(ca_public_key, ec.EllipticCurvePublicKey)
    ca_public_key.verify(
        certificate.signature,
        certificate.tbs_certificate_bytes,
        ec.ECDSA(hashes.SHA256()),
    )
    other_ca = pki.create_dev_ca(now=NOW)
    assert not pki.chains_to(certificate, other_ca.certificate)
    assert pki.chains_to(certificate, ca.certificate)

    san = _extension(certificate, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://quantmesh.local/execution"
    ]
    assert san.get_values_for_type(x509.DNSName) == ["execution.quantmesh.local", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert list(_extension(certificate, x509.ExtendedKeyUsage)) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    usage = _extension(certificate, x509.KeyUsage)
    assert usage.digital_signature
    assert not usage.key_cert_sign
    assert _extension(certificate, x509.BasicConstraints).ca is False
    assert certificate.not_valid_after_utc - NOW == timedelta(hours=24)
    assert certificate.not_valid_before_utc <= NOW
    assert _extension(certificate, x509.AuthorityKeyIdentifier).key_identifier == (
        _extension(ca.certificate, x509.SubjectKeyIdentifier).digest
    )
    assert _extension(certificate, x509.SubjectKeyIdentifier).digest == (
        x509.SubjectKeyIdentifier.from_public_key(issued.private_key.public_key()).digest
    )
    assert issued.private_key.curve.name == "secp256r1"
    pki.verify_service_certificate(certificate, ca.certificate, "execution", now=NOW)


def test_verification_rejects_the_wrong_identity_an_expired_cert_and_another_ca() -> None:
    ca = pki.create_dev_ca(now=NOW)
    certificate = pki.issue_service_certificate(ca, "risk", now=NOW).certificate

    with pytest.raises(ValueError, match=re.escape("spiffe://quantmesh.local/execution")):
        pki.verify_service_certificate(certificate, ca.certificate, "execution", now=NOW)
    with pytest.raises(ValueError, match="valid from"):
        pki.verify_service_certificate(
            certificate, ca.certificate, "risk", now=NOW + timedelta(hours=25)
        )
    with pytest.raises(ValueError, match="not issued by this CA"):
        pki.verify_service_certificate(
            certificate, pki.create_dev_ca(now=NOW).certificate, "risk", now=NOW
        )
    with pytest.raises(ValueError, match="is a CA"):
        pki.verify_service_certificate(ca.certificate, ca.certificate, "risk", now=NOW)


def test_lifetime_is_configurable_but_short_and_never_outlives_the_ca() -> None:
    ca = pki.create_dev_ca(now=NOW, lifetime=timedelta(hours=2))
    one_hour = pki.issue_service_certificate(ca, "client", lifetime=timedelta(hours=1), now=NOW)
    assert one_hour.certificate.not_valid_after_utc - NOW == timedelta(hours=1)
    clamped = pki.issue_service_certificate(ca, "client", lifetime=timedelta(hours=5), now=NOW)
    assert clamped.certificate.not_valid_after_utc == ca.certificate.not_valid_after_utc
    with pytest.raises(ValueError, match="lifetime"):
        pki.issue_service_certificate(ca, "client", lifetime=timedelta(days=365), now=NOW)
    with pytest.raises(ValueError, match="lifetime"):
        pki.issue_service_certificate(ca, "client", lifetime=timedelta(0), now=NOW)


# --------------------------------------------------------------------------- the folder


def test_init_writes_the_layout_with_private_keys_0600_and_folders_0700(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    ca = pki.init_pki(directory, ["marketdata", "client"], now=NOW)

    assert _mode(directory) == 0o700
    assert _mode(directory / "ca-key.pem") == 0o600
    assert pki.load_certificate(directory / "ca.pem") == ca.certificate
    for service in ("marketdata", "client"):
        folder = directory / service
        assert _mode(folder) == 0o700
        assert _mode(folder / "key.pem") == 0o600
        assert (folder / "ca.pem").read_bytes() == (directory / "ca.pem").read_bytes()
        certificate = pki.load_certificate(folder / "cert.pem")
        pki.verify_service_certificate(certificate, ca.certificate, service, now=NOW)
        key = serialization.load_pem_private_key((folder / "key.pem").read_bytes(), None)
        assert key.public_key() == certificate.public_key()
    # No temporary file is left behind for a watcher to trip over.
    assert not [path for path in directory.rglob(".*.tmp")]


def test_key_is_never_readable_by_others_even_under_a_permissive_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        pki.init_pki(tmp_path / "pki", ["risk"], now=NOW)
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "pki" / "risk" / "key.pem") == 0o600
    assert _mode(tmp_path / "pki" / "ca-key.pem") == 0o600
    assert _mode(tmp_path / "pki" / "risk") == 0o700


def test_init_refuses_to_replace_an_existing_ca_unless_forced(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    first = pki.init_pki(directory, ["risk"], now=NOW)
    with pytest.raises(FileExistsError):
        pki.init_pki(directory, ["risk"], now=NOW)
    assert pki.load_certificate(directory / "ca.pem") == first.certificate

    second = pki.init_pki(directory, ["risk"], force=True, now=NOW)
    assert second.certificate != first.certificate
    pki.verify_service_certificate(
        pki.load_certificate(directory / "risk" / "cert.pem"), second.certificate, "risk", now=NOW
    )


# --------------------------------------------------------------------------- a user CA


def test_a_user_ca_signs_the_certificates_and_its_key_is_not_copied(tmp_path: Path) -> None:
    cert_path, key_path, user_key = _write_user_ca(tmp_path / "user")
    user_ca = pki.load_ca(cert_path, key_path, now=NOW)
    directory = tmp_path / "pki"
    pki.init_pki(directory, ["edge"], ca=user_ca, now=NOW)

    assert not (directory / "ca-key.pem").exists()
    written_keys = [
        serialization.load_pem_private_key(path.read_bytes(), None)
        for path in directory.rglob("*.pem")
        if b"PRIVATE KEY" in path.read_bytes()
    ]
    assert written_keys  # the service key is there...
    assert all(key.public_key() != user_key.public_key() for key in written_keys)  # ...not the CA's
    assert (directory / "ca.pem").read_bytes() == cert_path.read_bytes()
    certificate = pki.load_certificate(directory / "edge" / "cert.pem")
    pki.verify_service_certificate(certificate, user_ca.certificate, "edge", now=NOW)

    # rotate finds the user's CA again from the recorded paths.
    assert pki.rotate(directory, renew_before=timedelta(days=2), now=NOW) == ["edge"]
    assert pki.load_ca_for_dir(directory, now=NOW).owned is False


def test_a_key_that_does_not_match_the_ca_is_rejected_naming_the_key_file(tmp_path: Path) -> None:
    cert_path, _, _ = _write_user_ca(tmp_path / "one")
    _, other_key_path, _ = _write_user_ca(tmp_path / "two")
    with pytest.raises(
        ValueError, match=re.escape(f"{other_key_path}: private key does not match")
    ):
        pki.load_ca(cert_path, other_key_path, now=NOW)


def test_a_certificate_that_is_not_a_ca_is_rejected_naming_the_file(tmp_path: Path) -> None:
    cert_path, key_path, _ = _write_user_ca(tmp_path / "leaf", ca=False)
    with pytest.raises(ValueError, match=re.escape(f"{cert_path}: not a CA certificate")):
        pki.load_ca(cert_path, key_path, now=NOW)


def test_files_that_are_not_pem_are_rejected_naming_the_file(tmp_path: Path) -> None:
    cert_path, key_path, _ = _write_user_ca(tmp_path / "user")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=re.escape(f"{garbage}: not a PEM certificate")):
        pki.load_ca(garbage, key_path, now=NOW)
    with pytest.raises(ValueError, match=re.escape(f"{garbage}: not a PEM private key")):
        pki.load_ca(cert_path, garbage, now=NOW)
    missing = tmp_path / "missing.pem"
    with pytest.raises(ValueError, match=re.escape(f"{missing}: cannot read")):
        pki.load_ca(missing, key_path, now=NOW)


# --------------------------------------------------------------------------- rotation


def test_rotate_renews_only_certificates_near_expiry(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    pki.init_pki(directory, ["risk", "decision"], now=NOW)
    # "risk" gets a 3 h certificate: in the last third of its life an hour and a half later.
    ca = pki.load_ca_for_dir(directory, now=NOW)
    pki.issue_into(directory, ca, "risk", lifetime=timedelta(hours=3), now=NOW)
    risk_before = (directory / "risk" / "cert.pem").read_bytes()
    decision_before = (directory / "decision" / "cert.pem").read_bytes()

    assert pki.rotate(directory, now=NOW + timedelta(minutes=30)) == []
    assert (directory / "risk" / "cert.pem").read_bytes() == risk_before

    later = NOW + timedelta(hours=2, minutes=30)
    assert pki.rotate(directory, now=later) == ["risk"]
    renewed = pki.load_certificate(directory / "risk" / "cert.pem")
    assert renewed.not_valid_after_utc - later == timedelta(hours=3)  # keeps its lifetime
    assert (directory / "decision" / "cert.pem").read_bytes() == decision_before
    assert _mode(directory / "risk" / "key.pem") == 0o600

    # An explicit window renews whatever expires inside it.
    assert pki.rotate(directory, renew_before=timedelta(hours=30), now=later) == [
        "decision",
        "risk",
    ]


def test_rotate_reissues_a_broken_certificate(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    pki.init_pki(directory, ["risk"], now=NOW)
    (directory / "risk" / "cert.pem").write_text("truncated")
    assert pki.rotate(directory, now=NOW) == ["risk"]
    report = pki.inspect(directory, now=NOW)
    assert report.services[0].problem is None


def test_inspect_reports_identity_validity_and_chain(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    pki.init_pki(directory, ["risk", "client"], now=NOW)
    report = pki.inspect(directory, now=NOW + timedelta(hours=6))

    assert report.ca_owned
    assert [status.service for status in report.services] == ["client", "risk"]
    risk = report.services[1]
    assert risk.spiffe_id == "spiffe://quantmesh.local/risk"
    assert risk.chains_to_ca
    assert risk.problem is None
    assert risk.hours_left == pytest.approx(18)
    assert risk.days_left == pytest.approx(0.75)
    assert risk.not_after == NOW + timedelta(hours=24)

    # A certificate from another CA shows up as not chaining.
    stranger = pki.create_dev_ca(now=NOW)
    pki.write_service(directory, pki.issue_service_certificate(stranger, "risk", now=NOW), stranger)
    risk = pki.inspect(directory, now=NOW).services[1]
    assert not risk.chains_to_ca
    assert risk.problem is not None


# --------------------------------------------------------------------------- openssl


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not on PATH")
def test_openssl_verifies_a_service_certificate_against_the_ca(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    pki.init_pki(directory, ["inference"])
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(directory / "ca.pem"),
            "-purpose",
            "sslserver",
            str(directory / "inference" / "cert.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK")


# --------------------------------------------------------------------------- the CLI


def test_cli_init_show_rotate_and_refusal_to_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    directory = tmp_path / "pki"
    flags = ["--dir", str(directory)]

    created = runner.invoke(app, ["pki", "init", *flags, "--services", "risk,client"])
    assert created.exit_code == 0, created.output
    assert sorted(pki.service_folders(directory)) == ["client", "risk"]

    refused = runner.invoke(app, ["pki", "init", *flags])
    assert refused.exit_code == 2
    assert "already exists" in _text(refused.output)
    assert "--force" in _text(refused.output)

    forced = runner.invoke(app, ["pki", "init", *flags, "--force", "--hours", "1"])
    assert forced.exit_code == 0, forced.output
    assert set(pki.DEFAULT_SERVICES) <= set(pki.service_folders(directory))

    shown = runner.invoke(app, ["pki", "show", *flags])
    assert shown.exit_code == 0, shown.output
    assert "spiffe://quantmesh.local/risk" in shown.output
    assert "dev CA" in shown.output

    nothing = runner.invoke(app, ["pki", "rotate", *flags])
    assert nothing.exit_code == 0, nothing.output
    assert "nothing to renew" in _text(nothing.output)
    everything = runner.invoke(app, ["pki", "rotate", *flags, "--within-hours", "2"])
    assert everything.exit_code == 0, everything.output
    assert f"renewed {len(pki.DEFAULT_SERVICES)}" in _text(everything.output)


def test_cli_uses_a_user_ca_and_reports_bad_input_with_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    cert_path, key_path, _ = _write_user_ca(tmp_path / "user")
    directory = tmp_path / "pki"
    result = runner.invoke(
        app,
        [
            "pki",
            "init",
            "--dir",
            str(directory),
            "--services",
            "edge",
            "--ca-cert",
            str(cert_path),
            "--ca-key",
            str(key_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert not (directory / "ca-key.pem").exists()

    only_cert = runner.invoke(
        app, ["pki", "init", "--dir", str(tmp_path / "x"), "--ca-cert", str(cert_path)]
    )
    assert only_cert.exit_code == 2
    leaf_cert, leaf_key, _ = _write_user_ca(tmp_path / "leaf", ca=False)
    not_ca = runner.invoke(
        app,
        [
            "pki",
            "init",
            "--dir",
            str(tmp_path / "y"),
            "--ca-cert",
            str(leaf_cert),
            "--ca-key",
            str(leaf_key),
        ],
        env={"COLUMNS": "300"},
    )
    assert not_ca.exit_code == 2
    assert "not a CA certificate" in _text(not_ca.output)
    missing = runner.invoke(app, ["pki", "show", "--dir", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2


def test_cli_default_folder_is_under_quantmesh_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUANTMESH_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["pki", "init", "--services", "risk"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "home" / "pki" / "risk" / "cert.pem").exists()
