# TLS for the MQTT link, shared by the board shells (the one part of lib/ that touches a file and
# the ssl module; the core itself never imports it). The broker's certificate is checked against
# the project's own CA (broker/certs.py), whose certificate provisioning writes to the board.
import binascii
import ssl


def pem_to_der(pem):
    """The first certificate of a PEM file as DER bytes.

    MicroPython's SSLContext.load_verify_locations(cadata=...) takes DER only (PEM fails with
    "invalid cert", measured on the 1.29 unix port), so the file can stay PEM on the board.
    """
    if pem[:1] != b"-":
        return pem  # already DER
    body = []
    inside = False
    for line in pem.split(b"\n"):
        line = line.strip()
        if line.startswith(b"-----BEGIN"):
            inside = True
        elif line.startswith(b"-----END"):
            break
        elif inside and line:
            body.append(line)
    return binascii.a2b_base64(b"".join(body))


def make_ssl_wrap(ca_path, server_hostname):
    """A function socket -> TLS socket that verifies the broker against the CA in ca_path."""
    with open(ca_path, "rb") as f:
        ca = pem_to_der(f.read())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca)
    # MicroPython's client context starts with verify_mode CERT_NONE (measured on 1.29), unlike
    # CPython's: without this line any certificate would be accepted.
    ctx.verify_mode = ssl.CERT_REQUIRED

    def wrap(sock):
        # The socket is non-blocking: the handshake runs a step at a time inside the MQTT
        # client's reads and writes (mqtt.py), never in one call that would hold the loop. A
        # failed certificate check surfaces there, as ValueError on MicroPython, which the
        # client turns into the OSError of any other link fault.
        return ctx.wrap_socket(sock, server_hostname=server_hostname, do_handshake_on_connect=False)

    return wrap
