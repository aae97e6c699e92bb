"""A throwaway self-signed certificate for serving ``wss://`` on 127.0.0.1."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile

__all__ = ["SelfSignedCertificate"]


class SelfSignedCertificate:
    """A P-256 certificate for ``127.0.0.1`` / ``localhost`` that is its own trust anchor.

    Files live in a private temporary directory until :meth:`cleanup`.  Needs the
    ``cryptography`` package (imported only here).
    """

    def __init__(self) -> None:
        try:
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.x509.oid import NameOID
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                "VoiceServer(tls=True) needs the 'cryptography' package to make a self-signed certificate; "
                "install it (pip install cryptography) or use tls=False"
            ) from exc
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fastvoice test voice server")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        self._dir = tempfile.TemporaryDirectory(prefix="fastvoice-tls-")
        self.cert_file = os.path.join(self._dir.name, "cert.pem")
        self.key_file = os.path.join(self._dir.name, "key.pem")
        with open(self.cert_file, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(self.key_file, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )

    @property
    def ca_file(self) -> str:
        """Path of the PEM file a client must trust (the certificate itself)."""
        return self.cert_file

    def server_context(self) -> ssl.SSLContext:
        """An ``SSLContext`` for the server side."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """An ``SSLContext`` for clients that trusts this certificate (hostname checks on)."""
        return ssl.create_default_context(cafile=self.cert_file)

    def cleanup(self) -> None:
        """Delete the certificate files."""
        self._dir.cleanup()
