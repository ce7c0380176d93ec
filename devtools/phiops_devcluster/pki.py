"""The certificates a local control plane needs, made once with openssl."""

from __future__ import annotations

import subprocess
from pathlib import Path

APISERVER_DNS_SANS = (
    "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
    "DNS:kubernetes.default.svc.cluster.local"
)


def apiserver_sans(service_ip: str) -> str:
    """The serving certificate's names: loopback and the `kubernetes` Service's ClusterIP."""
    return f"{APISERVER_DNS_SANS},IP:127.0.0.1,IP:{service_ip}"


# name -> (common name, organisation); these identities are what RBAC's defaults expect.
CLIENTS = {
    "admin": ("phiops-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", ""),
    "scheduler": ("system:kube-scheduler", ""),
}


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _subject(cn: str, org: str) -> str:
    return f"/CN={cn}" + (f"/O={org}" if org else "")


def _sign(pki: Path, name: str, subject: str, extfile_text: str) -> None:
    _openssl("genrsa", "-out", f"{name}.key", "2048", cwd=pki)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki)
    (pki / f"{name}.ext").write_text(extfile_text)
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        f"{name}.crt",
        "-days",
        "3650",
        "-extfile",
        f"{name}.ext",
        cwd=pki,
    )


def _apiserver_extfile(service_ip: str) -> str:
    return f"subjectAltName={apiserver_sans(service_ip)}\nextendedKeyUsage=serverAuth\n"


def ensure_pki(pki: Path, service_ip: str = "10.0.0.1") -> None:
    """Create the CA, serving, client and service-account keys unless they already exist.

    `service_ip` (the `kubernetes` Service's ClusterIP) is in the serving certificate; when an
    existing one names another, only that certificate is made again (same CA).
    """
    if (pki / "done").exists():
        ext = pki / "apiserver.ext"
        if not ext.exists() or ext.read_text() != _apiserver_extfile(service_ip):
            _sign(pki, "apiserver", "/CN=kube-apiserver", _apiserver_extfile(service_ip))
        return
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("genrsa", "-out", "ca.key", "2048", cwd=pki)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-nodes",
        "-key",
        "ca.key",
        "-subj",
        "/CN=phiops-local-ca",
        "-days",
        "3650",
        "-out",
        "ca.crt",
        cwd=pki,
    )
    _sign(
        pki,
        "apiserver",
        "/CN=kube-apiserver",
        _apiserver_extfile(service_ip),
    )
    for name, (cn, org) in CLIENTS.items():
        _sign(pki, name, _subject(cn, org), "extendedKeyUsage=clientAuth\n")
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    (pki / "done").write_text("ok\n")
