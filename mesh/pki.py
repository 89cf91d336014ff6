"""The mesh's PKI: a dev CA, short-lived SPIFFE certificates, and their on-disk layout.

Every service proves who it is with an X.509 certificate whose only URI SAN is its SPIFFE
id (``spiffe://quantmesh.local/<service>``); peers authorise by that id, never by address.
Certificates live for hours, not years, so a leaked key is worth little: ``rotate``
re-issues them before they expire, and Envoy's file-based SDS picks the new files up
without a restart. That only works if a watcher never sees a half-written file, so every
file is written to a temporary name in the same folder, fsynced and renamed into place.

Layout of a PKI folder::

    <dir>/ca.pem                  the CA certificate (trust anchor)
    <dir>/ca-key.pem              the CA key, 0600 — only for the dev CA quantmesh created
    <dir>/ca-source.json          where a user-provided CA lives (paths, never the key)
    <dir>/<service>/cert.pem      the service certificate
    <dir>/<service>/key.pem       its private key, 0600
    <dir>/<service>/ca.pem        the trust bundle peers' certificates are checked against

A CA the user brings (``load_ca``) is used in place: its key is never copied into the
folder, only the paths to it are remembered so that ``rotate`` can sign again.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN = "quantmesh.local"
DEV_CA_COMMON_NAME = "quantmesh dev CA"
ORGANIZATION = "quantmesh"

DEV_CA_LIFETIME = timedelta(days=365)
DEFAULT_SERVICE_LIFETIME = timedelta(hours=24)
# Short-lived is the point of the design: anything longer should be a rotation instead.
MAX_SERVICE_LIFETIME = timedelta(days=30)
# Certificates start a little in the past so a peer whose clock lags still accepts them.
CLOCK_SKEW_ALLOWANCE = timedelta(minutes=5)

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
CA_SOURCE_FILE = "ca-source.json"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
TRUST_BUNDLE_FILE = "ca.pem"

# Every service of the pipeline, the edge proxy, and "client": an identity for external
# callers such as grpcurl that must present a certificate to the mesh.
DEFAULT_SERVICES: tuple[str, ...] = (
    "marketdata",
    "features",
    "inference",
    "decision",
    "risk",
    "execution",
    "analytics",
    "recorder",
    "trainer",
    "registry",
    "edge",
    "client",
)

# The key types a user's CA may have: everything X.509 signs with and Envoy understands.
_SIGNING_KEY_TYPES = (
    ec.EllipticCurvePrivateKey,
    rsa.RSAPrivateKey,
    dsa.DSAPrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)
_SIGNING_PUBLIC_KEY_TYPES = (
    ec.EllipticCurvePublicKey,
    rsa.RSAPublicKey,
    dsa.DSAPublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
)
_PRIVATE_FILE_MODE = 0o600
_PUBLIC_FILE_MODE = 0o644
_PRIVATE_DIR_MODE = 0o700
# A SPIFFE path segment, restricted further so a name is also a safe folder name.
_SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def spiffe_id(service: str) -> str:
    """The SPIFFE id of ``service``: ``spiffe://quantmesh.local/<service>``.

    Names are checked because they also become folder names: ``../x`` must not escape.
    """
    if not _SERVICE_NAME.fullmatch(service) or ".." in service:
        raise ValueError(
            f"invalid service name {service!r}: use lowercase letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return f"spiffe://{TRUST_DOMAIN}/{service}"


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA certificate with the key that signs for it.

    ``owned`` is true for a dev CA quantmesh generated: its key is written into the PKI
    folder. A CA the user brings is not owned; its key stays where the user keeps it.
    """

    certificate: x509.Certificate
    private_key: CertificateIssuerPrivateKeyTypes
    owned: bool
    cert_path: Path | None = None
    key_path: Path | None = None


@dataclass(frozen=True)
class IssuedCertificate:
    """A service certificate and its freshly generated private key."""

    service: str
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class ServiceStatus:
    """What ``inspect`` found for one service folder."""

    service: str
    spiffe_id: str | None
    not_before: datetime | None
    not_after: datetime | None
    remaining: timedelta | None
    chains_to_ca: bool
    problem: str | None

    @property
    def hours_left(self) -> float | None:
        """Hours until expiry (negative once expired), for display and alerting."""
        return None if self.remaining is None else self.remaining.total_seconds() / 3600

    @property
    def days_left(self) -> float | None:
        """Days until expiry (negative once expired)."""
        return None if self.remaining is None else self.remaining.total_seconds() / 86400


@dataclass(frozen=True)
class PkiReport:
    """The CA and every service certificate of a PKI folder."""

    ca_subject: str
    ca_not_after: datetime
    ca_owned: bool
    services: list[ServiceStatus]


# --------------------------------------------------------------------------- time


def _now(now: datetime | None) -> datetime:
    # Whole seconds: X.509 times have no fraction, so lifetimes compare exactly.
    moment = datetime.now(UTC) if now is None else now.astimezone(UTC)
    return moment.replace(microsecond=0)


# --------------------------------------------------------------------------- the CA


def create_dev_ca(
    *, now: datetime | None = None, lifetime: timedelta = DEV_CA_LIFETIME
) -> CertificateAuthority:
    """A self-signed EC P-256 CA for development: it may sign service certificates only.

    ``pathlen 0`` forbids intermediates: nothing but leaf certificates can chain to it,
    so a stolen service key can never mint identities.
    """
    issued_at = _now(now)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, DEV_CA_COMMON_NAME),
        ]
    )
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(issued_at - CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(issued_at + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(certificate=certificate, private_key=key, owned=True)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ValueError(f"{path}: cannot read: {error.strerror or error}") from None


def load_certificate(path: Path) -> x509.Certificate:
    """The first certificate of a PEM file; a ValueError names the file if there is none."""
    data = _read(path)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ValueError(f"{path}: not a PEM certificate") from None


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    if not constraints.value.ca:
        return False
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound:
        return True
    return usage.value.key_cert_sign


def _public_key_der(key: x509.Certificate | CertificateIssuerPrivateKeyTypes) -> bytes:
    public = key.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_ca(
    cert_path: Path, key_path: Path, *, password: bytes | None = None, now: datetime | None = None
) -> CertificateAuthority:
    """Load a CA the user brings from PEM files, checking it can really sign for the mesh.

    Every problem is a ValueError that names the file at fault, because the usual mistake
    is pointing at the wrong file (a leaf instead of the CA, the key of another cert).
    """
    certificate = load_certificate(cert_path)
    if not _is_ca(certificate):
        raise ValueError(
            f"{cert_path}: not a CA certificate (needs basicConstraints CA:TRUE and, if key "
            "usage is present, keyCertSign)"
        )
    moment = _now(now)
    if certificate.not_valid_after_utc <= moment:
        raise ValueError(f"{cert_path}: the CA expired at {certificate.not_valid_after_utc}")
    key_data = _read(key_path)
    try:
        key = serialization.load_pem_private_key(key_data, password=password)
    except TypeError:
        raise ValueError(
            f"{key_path}: the key is encrypted; decrypt it or supply its password"
        ) from None
    except ValueError:
        raise ValueError(f"{key_path}: not a PEM private key (or wrong password)") from None
    if not isinstance(key, _SIGNING_KEY_TYPES):
        raise ValueError(f"{key_path}: a {type(key).__name__} key cannot sign certificates")
    if _public_key_der(key) != _public_key_der(certificate):
        raise ValueError(f"{key_path}: private key does not match the CA certificate {cert_path}")
    return CertificateAuthority(
        certificate=certificate,
        private_key=key,
        owned=False,
        cert_path=cert_path.resolve(),
        key_path=key_path.resolve(),
    )


# --------------------------------------------------------------------------- issuing


def _signature_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    # Ed25519/Ed448 sign the message itself; every other key type signs a SHA-256 digest.
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def _authority_key_identifier(ca_certificate: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    # Reuse the CA's own SKI when it has one, so the AKI matches it byte for byte even if
    # the CA computed its SKI with another method than the SHA-1 of the public key.
    try:
        ski = ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        ski = None
    if ski is not None:
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)
    public_key = ca_certificate.public_key()
    if not isinstance(public_key, _SIGNING_PUBLIC_KEY_TYPES):
        raise ValueError(f"a CA with a {type(public_key).__name__} cannot sign")
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)


def service_host_name(service: str) -> str:
    """The DNS name in ``service``'s certificate that proxyless clients verify."""
    return f"{service}.{TRUST_DOMAIN}"


def issue_service_certificate(
    ca: CertificateAuthority,
    service: str,
    *,
    lifetime: timedelta = DEFAULT_SERVICE_LIFETIME,
    now: datetime | None = None,
) -> IssuedCertificate:
    """A short-lived X.509-SVID for ``service``, signed by ``ca``.

    The only URI SAN is the SPIFFE id, which is what peers authorise on. The DNS name
    ``<service>.quantmesh.local`` lets a proxyless gRPC client check which service it
    reached (gRPC verifies host names, not URI SANs); DNS ``localhost`` and IP
    ``127.0.0.1`` let loopback TLS clients (grpcurl) verify the server by host name. The
    certificate serves both ends of mutual TLS (serverAuth and clientAuth), is never a
    CA, and does not outlive the CA that signed it.
    """
    if lifetime <= timedelta(0) or lifetime > MAX_SERVICE_LIFETIME:
        raise ValueError(
            f"service certificate lifetime must be in (0, {MAX_SERVICE_LIFETIME}], got {lifetime}"
        )
    identity = spiffe_id(service)
    issued_at = _now(now)
    not_after = min(issued_at + lifetime, ca.certificate.not_valid_after_utc)
    if not_after <= issued_at:
        raise ValueError("the CA has expired: it cannot issue certificates any more")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, service),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(
            max(issued_at - CLOCK_SKEW_ALLOWANCE, ca.certificate.not_valid_before_utc)
        )
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(identity),
                    x509.DNSName(service_host_name(service)),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_identifier(ca.certificate), critical=False)
        .sign(ca.private_key, _signature_hash(ca.private_key))
    )
    return IssuedCertificate(service=service, certificate=certificate, private_key=key)


# --------------------------------------------------------------------------- verifying


def spiffe_ids_of(certificate: x509.Certificate) -> list[str]:
    """The ``spiffe://`` URI SANs of a certificate (an X.509-SVID has exactly one)."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [
        uri
        for uri in names.value.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith("spiffe://")
    ]


def verify_service_certificate(
    certificate: x509.Certificate,
    ca_certificate: x509.Certificate,
    expected_service: str,
    *,
    now: datetime | None = None,
) -> None:
    """Check ``certificate`` is a valid SVID of ``expected_service`` issued by the CA.

    Raises ValueError saying what is wrong: signed by another CA, expired or not yet
    valid, a CA itself, or carrying another (or more than one) SPIFFE id. This is what a
    proxyless peer must check before trusting a caller.
    """
    try:
        certificate.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError, InvalidSignature):
        raise ValueError("the certificate was not issued by this CA") from None
    moment = _now(now)
    if not certificate.not_valid_before_utc <= moment <= certificate.not_valid_after_utc:
        raise ValueError(
            f"the certificate is valid from {certificate.not_valid_before_utc} to "
            f"{certificate.not_valid_after_utc}, not at {moment}"
        )
    if _is_ca(certificate):
        raise ValueError("the certificate is a CA, not a service identity")
    identities = spiffe_ids_of(certificate)
    expected = spiffe_id(expected_service)
    if identities != [expected]:
        raise ValueError(f"expected the single SPIFFE id {expected}, found {identities or 'none'}")


def chains_to(certificate: x509.Certificate, ca_certificate: x509.Certificate) -> bool:
    """Whether ``ca_certificate`` signed ``certificate`` (names and signature, not time)."""
    try:
        certificate.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# --------------------------------------------------------------------------- writing


def _ensure_private_dir(path: Path) -> None:
    # Created 0700 from the start; tightened if it exists, since it holds private keys.
    path.mkdir(mode=_PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != _PRIVATE_DIR_MODE:
        path.chmod(_PRIVATE_DIR_MODE)


def _fsync_dir(path: Path) -> None:
    # The rename is only durable once the directory entry is on disk.
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the new, never a part.

    The temporary file is created with its final ``mode`` (a key is never readable by
    others, not even for an instant), fsynced, then renamed over ``path``.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(temporary, flags, mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def certificate_pem(certificate: x509.Certificate) -> bytes:
    """The certificate as PEM."""
    return certificate.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    """The key as unencrypted PKCS#8 PEM (written with mode 0600 by its callers)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_ca(directory: Path, ca: CertificateAuthority) -> None:
    """Write the CA certificate; the key too for a dev CA, only its location otherwise."""
    _ensure_private_dir(directory)
    if ca.owned:
        write_atomically(
            directory / CA_KEY_FILE, private_key_pem(ca.private_key), mode=_PRIVATE_FILE_MODE
        )
        (directory / CA_SOURCE_FILE).unlink(missing_ok=True)
    else:
        source = {"cert": str(ca.cert_path), "key": str(ca.key_path)}
        write_atomically(
            directory / CA_SOURCE_FILE,
            (json.dumps(source, indent=2) + "\n").encode(),
            mode=_PRIVATE_FILE_MODE,
        )
        # A dev key left behind would be picked up by rotate instead of the user's CA.
        (directory / CA_KEY_FILE).unlink(missing_ok=True)
    write_atomically(
        directory / CA_CERT_FILE, certificate_pem(ca.certificate), mode=_PUBLIC_FILE_MODE
    )


def write_service(directory: Path, issued: IssuedCertificate, ca: CertificateAuthority) -> Path:
    """Write a service's trust bundle, key and certificate into ``<directory>/<service>/``.

    Order matters to a file watcher: the bundle first, then the key, the certificate last.
    Envoy's SDS rejects a key that does not match the certificate and keeps serving the
    previous pair, so the in-between state is harmless and the last write completes it.
    """
    service_dir = directory / issued.service
    _ensure_private_dir(service_dir)
    write_atomically(
        service_dir / TRUST_BUNDLE_FILE, certificate_pem(ca.certificate), mode=_PUBLIC_FILE_MODE
    )
    write_atomically(
        service_dir / KEY_FILE, private_key_pem(issued.private_key), mode=_PRIVATE_FILE_MODE
    )
    write_atomically(
        service_dir / CERT_FILE, certificate_pem(issued.certificate), mode=_PUBLIC_FILE_MODE
    )
    return service_dir


def issue_into(
    directory: Path,
    ca: CertificateAuthority,
    service: str,
    *,
    lifetime: timedelta = DEFAULT_SERVICE_LIFETIME,
    now: datetime | None = None,
) -> Path:
    """Issue ``service`` a certificate and write it into the PKI folder; its folder."""
    issued = issue_service_certificate(ca, service, lifetime=lifetime, now=now)
    return write_service(directory, issued, ca)


def init_pki(
    directory: Path,
    services: Sequence[str] = DEFAULT_SERVICES,
    *,
    ca: CertificateAuthority | None = None,
    lifetime: timedelta = DEFAULT_SERVICE_LIFETIME,
    force: bool = False,
    now: datetime | None = None,
) -> CertificateAuthority:
    """Create the PKI folder: a CA (a new dev CA unless ``ca`` is given) and certificates.

    An existing CA is never replaced silently: every certificate it signed would stop
    verifying. Raises FileExistsError unless ``force``.
    """
    for service in services:
        spiffe_id(service)  # every name is checked before anything is written
    if (directory / CA_CERT_FILE).exists() and not force:
        raise FileExistsError(f"{directory / CA_CERT_FILE} already exists")
    authority = ca if ca is not None else create_dev_ca(now=now)
    write_ca(directory, authority)
    for service in services:
        issue_into(directory, authority, service, lifetime=lifetime, now=now)
    return authority


# --------------------------------------------------------------------------- reading back


def load_ca_for_dir(directory: Path, *, now: datetime | None = None) -> CertificateAuthority:
    """The CA that signs for a PKI folder: its dev CA, or the user's CA it points to."""
    cert_path = directory / CA_CERT_FILE
    if not cert_path.exists():
        raise ValueError(f"{cert_path}: no CA here; run `quantmesh pki init` first")
    key_path = directory / CA_KEY_FILE
    if key_path.exists():
        authority = load_ca(cert_path, key_path, now=now)
        return CertificateAuthority(
            certificate=authority.certificate,
            private_key=authority.private_key,
            owned=True,
        )
    source_path = directory / CA_SOURCE_FILE
    if source_path.exists():
        try:
            source = json.loads(_read(source_path))
            user_cert, user_key = Path(source["cert"]), Path(source["key"])
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{source_path}: not a CA source record") from None
        authority = load_ca(user_cert, user_key, now=now)
        if authority.certificate != load_certificate(cert_path):
            raise ValueError(f"{cert_path}: differs from the user CA {user_cert}; re-run init")
        return authority
    raise ValueError(f"{directory}: neither {CA_KEY_FILE} nor {CA_SOURCE_FILE}; cannot sign")


def service_folders(directory: Path) -> list[str]:
    """The services that have a folder with a certificate or key in the PKI folder."""
    if not directory.is_dir():
        return []
    return sorted(
        entry.name
        for entry in directory.iterdir()
        if entry.is_dir() and ((entry / CERT_FILE).exists() or (entry / KEY_FILE).exists())
    )


def _lifetime_of(certificate: x509.Certificate) -> timedelta:
    span = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    return max(span - CLOCK_SKEW_ALLOWANCE, timedelta(seconds=1))


def rotate(
    directory: Path,
    services: Iterable[str] | None = None,
    *,
    renew_before: timedelta | None = None,
    ca: CertificateAuthority | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Re-issue the certificates that expire within ``renew_before``; the services renewed.

    By default a certificate is renewed in the last third of its lifetime, which leaves
    two renewal attempts before expiry if rotation runs every third of a lifetime. A
    certificate that is missing, unreadable or signed by another CA is re-issued too. The
    new certificate keeps the lifetime of the one it replaces.
    """
    authority = ca if ca is not None else load_ca_for_dir(directory, now=now)
    moment = _now(now)
    names = list(services) if services is not None else service_folders(directory)
    renewed: list[str] = []
    for service in names:
        cert_path = directory / service / CERT_FILE
        try:
            current: x509.Certificate | None = load_certificate(cert_path)
        except ValueError:
            current = None
        if (
            current is None
            or not chains_to(current, authority.certificate)
            or service_host_name(service) not in _dns_names_of(current)
        ):
            issue_into(directory, authority, service, now=moment)
            renewed.append(service)
            continue
        lifetime = min(_lifetime_of(current), MAX_SERVICE_LIFETIME)
        threshold = renew_before if renew_before is not None else lifetime / 3
        if current.not_valid_after_utc - moment <= threshold:
            issue_into(directory, authority, service, lifetime=lifetime, now=moment)
            renewed.append(service)
    return renewed


def _dns_names_of(certificate: x509.Certificate) -> list[str]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return names.value.get_values_for_type(x509.DNSName)


def ensure_pki(directory: Path, services: Sequence[str] = DEFAULT_SERVICES) -> list[str]:
    """Make ``directory`` ready for a run: a dev PKI if it has none, else renew what is due.

    Returns the services that got a new certificate.
    """
    if not (directory / CA_CERT_FILE).exists():
        init_pki(directory, services)
        return list(services)
    return rotate(directory, services)


def inspect(directory: Path, *, now: datetime | None = None) -> PkiReport:
    """The state of a PKI folder: the CA, and per service its id, validity and chain."""
    ca_certificate = load_certificate(directory / CA_CERT_FILE)
    moment = _now(now)
    statuses: list[ServiceStatus] = []
    for service in service_folders(directory):
        try:
            certificate = load_certificate(directory / service / CERT_FILE)
        except ValueError as error:
            statuses.append(ServiceStatus(service, None, None, None, None, False, str(error)))
            continue
        identities = spiffe_ids_of(certificate)
        problem: str | None
        try:
            verify_service_certificate(certificate, ca_certificate, service, now=moment)
            problem = None
        except ValueError as error:
            problem = str(error)
        statuses.append(
            ServiceStatus(
                service=service,
                spiffe_id=identities[0] if len(identities) == 1 else None,
                not_before=certificate.not_valid_before_utc,
                not_after=certificate.not_valid_after_utc,
                remaining=certificate.not_valid_after_utc - moment,
                chains_to_ca=chains_to(certificate, ca_certificate),
                problem=problem,
            )
        )
    return PkiReport(
        ca_subject=ca_certificate.subject.rfc4514_string(),
        ca_not_after=ca_certificate.not_valid_after_utc,
        ca_owned=(directory / CA_KEY_FILE).exists(),
        services=statuses,
    )
