#!/usr/bin/python3 -IS
"""compatlab-winrs-standin: a STAND-IN for Windows's WinRM service, inside a Linux guest.

NOT WINDOWS AND NOT MICROSOFT'S WINRM. This program answers the small part of WS-Management and
Windows Remote Shell (MS-WSMV) that pywinrm uses, so that compatlab's WinRM channel (pywinrm +
requests, the code path of a Windows cell) can drive the demo's tiny Linux guests end to end:
the forwarded port, HTTP authentication, shells, commands, output, exit codes, timeouts and
reboots are real; what runs the commands is ``/bin/sh``, not cmd.exe or PowerShell.

Supported (resource URI ``http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd`` only):

- ``Create`` a shell (``rsp:WorkingDirectory``, ``rsp:Environment``, ``rsp:IdleTimeOut`` honoured;
  ``WINRS_CODEPAGE`` and ``WINRS_NOPROFILE`` accepted and ignored: output bytes pass through as
  the guest wrote them, i.e. UTF-8);
- ``Command``: the command line (``rsp:Command`` + ``rsp:Arguments``) runs as ``/bin/sh -c LINE``
  in its own process group, with stdin a pipe fed by ``Send`` (see :func:`plan_command` for how
  ``cmd /c ...`` and ``powershell -EncodedCommand ...`` are treated);
- ``Send`` (stdin, ``End="true"`` closes it);
- ``Receive``: stdout and stderr as they come, ``CommandState`` ``Running`` or ``Done`` with
  ``rsp:ExitCode``; a long poll held until output, exit, or ``w:OperationTimeout`` (capped at
  ``--max-operation-timeout``, default 60 s as Windows's MaxTimeoutms), after which the recorded
  Windows fault ``w:TimedOut`` / 2150858793 is returned, as Windows does;
- ``Signal`` ``terminate`` (SIGKILL to the command's process group; also forgets the command),
  ``ctrl_c`` / ``ctrl_break`` (SIGINT);
- ``Delete`` (kills what still runs in the shell: Windows puts a shell's processes in a job);
- HTTP Basic, and NTLM (NTLMv2 only) with WS-Man message encryption
  (``multipart/encrypted``, ``application/HTTP-SPNEGO-session-encrypted``: NTLM sealing and
  signing), which is what pywinrm does by default over http. No Kerberos, CredSSP, HTTPS or
  certificate authentication; no PowerShell remoting (PSRP), Enumerate, Get or Identify.

The response envelopes are those Windows sends, as recorded by pywinrm's own tests (copied in
``tests/support/wsman/`` of compatlab with their provenance; ``test_winrs_standin.py`` checks
that the templates here are those recordings). Fault texts other than the operation timeout
are this stand-in's own words. The HTTP ``Server`` header says ``compatlab-winrs-standin``.

Run ``compatlab-winrs --help``. In the guest it listens on 0.0.0.0:5985 and runs commands as
root (there is one account, checked at logon only). Python standard library only.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from string import Template

if False:  # for type checkers only (no typing import: startup time under TCG counts here)
    import ssl

NAME = "compatlab-winrs-standin"
VERSION = "1.0"

SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
CMD_RESOURCE_URI = SHELL_URI + "/cmd"
NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": SHELL_URI,
}
ACTIONS = {
    "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create": "Create",
    "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete": "Delete",
    SHELL_URI + "/Command": "Command",
    SHELL_URI + "/Send": "Send",
    SHELL_URI + "/Receive": "Receive",
    SHELL_URI + "/Signal": "Signal",
}

ACTIONS_BY_NAME = {name: uri for uri, name in ACTIONS.items()}

# WSManFault codes (wsmerror.h).
ERROR_WSMAN_OPERATION_TIMEDOUT = 2150858793
ERROR_WSMAN_ACTION_NOT_SUPPORTED = 2150858771
ERROR_WSMAN_INVALID_PARAMETER = 2150858810
ERROR_WSMAN_INVALID_RESOURCE_URI = 2150858811
ERROR_WSMAN_SCHEMA_VALIDATION_ERROR = 2150858817
ERROR_WSMAN_UNEXPECTED_SELECTORS = 2150858843  # what Windows answers for an unknown ShellId
ERROR_WSMAN_QUOTA_MAX_SHELLS = 2150859173
ERROR_WSMAN_PROVIDER_FAILURE = 2150858755

# The recorded Windows text of the Receive long-poll timeout (tests/support/wsman/README.md).
TIMEOUT_TEXT = (
    "The WS-Management service cannot complete the operation within the time specified in "
    "OperationTimeout.  "
)

# -- envelopes: the recorded Windows responses, ${...} filled per request ----------------------
# Byte for byte the files in compatlab's tests/support/wsman/ (recorded by pywinrm's tests
# against Windows), which test_winrs_standin.py checks. FAULT is fault_sender.xml with its
# values as placeholders; filled with the recorded values it gives fault_sender.xml and
# fault_operation_timeout.xml again.

_CREATE = """\
<?xml version="1.0" ?>
<s:Envelope xml:lang="en-US" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" \
xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd" \
xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell" \
xmlns:s="http://www.w3.org/2003/05/soap-envelope" \
xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" \
xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer">
    <s:Header>
        <a:Action>http://schemas.xmlsoap.org/ws/2004/09/transfer/CreateResponse</a:Action>
        <a:MessageID>uuid:${message_id}</a:MessageID>
        <a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>
        <a:RelatesTo>${relates_to}</a:RelatesTo>
    </s:Header>
    <s:Body>
        <x:ResourceCreated>
            <a:Address>${endpoint}</a:Address>
            <a:ReferenceParameters>
                <w:ResourceURI>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd\
</w:ResourceURI>
                <w:SelectorSet>
                    <w:Selector Name="ShellId">${shell_id}</w:Selector>
                </w:SelectorSet>
            </a:ReferenceParameters>
        </x:ResourceCreated>
    </s:Body>
</s:Envelope>
"""

_COMMAND = """\
<?xml version="1.0"?>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" \
xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" \
xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer" \
xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" \
xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell" \
xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd" xml:lang="en-US">
<s:Header>
<a:Action>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandResponse</a:Action>
<a:MessageID>uuid:${message_id}</a:MessageID>
<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>
<a:RelatesTo>${relates_to}</a:RelatesTo>
</s:Header>
<s:Body>
<rsp:CommandResponse>
<rsp:CommandId>${command_id}</rsp:CommandId>
</rsp:CommandResponse>
</s:Body>
</s:Envelope>
"""

_SEND = """\
<?xml version="1.0" ?>
<s:Envelope xml:lang="en-US" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" \
xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd" \
xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell" \
xmlns:s="http://www.w3.org/2003/05/soap-envelope" \
xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" \
xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer">
<s:Header>
<a:Action>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/SendResponse</a:Action>
<a:MessageID>uuid:${message_id}</a:MessageID>
<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>
<a:RelatesTo>${relates_to}</a:RelatesTo>
</s:Header>
<s:Body>
<rsp:SendResponse/>
</s:Body>
</s:Envelope>
"""

_RECEIVE = """\
<?xml version="1.0"?>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" \
xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" \
xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" \
xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell" \
xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd" xml:lang="en-US">
<s:Header>
    <a:Action>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/ReceiveResponse</a:Action>
    <a:MessageID>uuid:${message_id}</a:MessageID>
    <a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>
    <a:RelatesTo>${relates_to}</a:RelatesTo>
</s:Header>
<s:Body>
    <rsp:ReceiveResponse>
${streams}
        ${command_state}
</rsp:ReceiveResponse>
</s:Body>
</s:Envelope>
"""

_SIGNAL = """\
<?xml version="1.0"?>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" \
xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" \
xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer" \
xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" \
xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell" \
xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd" xml:lang="en-US">
<s:Header>
    <a:Action>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/SignalResponse</a:Action>
    <a:MessageID>uuid:${message_id}</a:MessageID>
    <a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>
    <a:RelatesTo>${relates_to}</a:RelatesTo>
</s:Header>
<s:Body>
    <rsp:SignalResponse/>
</s:Body>
</s:Envelope>
"""

_DELETE = """\
<?xml version="1.0" ?>
<s:Envelope xml:lang="en-US" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" \
xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd" \
xmlns:s="http://www.w3.org/2003/05/soap-envelope" \
xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd">
    <s:Header>
        <a:Action>http://schemas.xmlsoap.org/ws/2004/09/transfer/DeleteResponse</a:Action>
        <a:MessageID>uuid:${message_id}</a:MessageID>
        <a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>
        <a:RelatesTo>${relates_to}</a:RelatesTo>
    </s:Header>
    <s:Body/>
</s:Envelope>
"""

_FAULT = """\
<s:Envelope xml:lang="en-US"
    xmlns:s="http://www.w3.org/2003/05/soap-envelope"
    xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing"
    xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer"
    xmlns:e="http://schemas.xmlsoap.org/ws/2004/08/eventing"
    xmlns:n="http://schemas.xmlsoap.org/ws/2004/09/enumeration"
    xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
    xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd">
    <s:Header>
        <a:Action>http://schemas.dmtf.org/wbem/wsman/1/wsman/fault</a:Action>
        <a:MessageID>uuid:${message_id}</a:MessageID>
        <a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>
        <a:RelatesTo>${relates_to}</a:RelatesTo>
    </s:Header>
    <s:Body>
        <s:Fault>
            <s:Code>
                <s:Value>${code}</s:Value>
                <s:Subcode>
                    <s:Value>${subcode}</s:Value>
                </s:Subcode>
            </s:Code>
            <s:Reason>
                <s:Text xml:lang="${lang}">${reason}</s:Text>
            </s:Reason>
            <s:Detail>
                <f:WSManFault
                    xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" \
Code="${wsman_code}" Machine="${machine}">
                    <f:Message>${message}</f:Message>
                </f:WSManFault>
            </s:Detail>
        </s:Fault>
    </s:Body>
</s:Envelope>
"""

TEMPLATES = {
    "create_response": Template(_CREATE),
    "command_response": Template(_COMMAND),
    "send_response": Template(_SEND),
    "receive_response": Template(_RECEIVE),
    "signal_response": Template(_SIGNAL),
    "delete_response": Template(_DELETE),
    "fault": Template(_FAULT),
}


def new_id() -> str:
    """A random (version 4) GUID in Windows's upper-case form."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex().upper()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def xml_escape(text: str, *, attribute: bool = False) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace('"', "&quot;") if attribute else text


def duration_seconds(text: str | None, default: float) -> float:
    """An ``xs:duration`` such as ``PT20S``, ``PT1.5S`` or ``PT2M`` in seconds."""
    if not text:
        return default
    match = re.fullmatch(r"P(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d*)?)S)?)?", text.strip())
    if not match or not any(match.groups()):
        return default
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


# -- crypto for NTLM: MD4 and RC4 are not in this Python's OpenSSL-free hashlib ----------------


def md4(data: bytes) -> bytes:
    """RFC 1320 MD4 (the NT hash is MD4 of the UTF-16LE password)."""
    mask = 0xFFFFFFFF

    def rotl(x: int, n: int) -> int:
        x &= mask
        return ((x << n) | (x >> (32 - n))) & mask

    message = data + b"\x80" + b"\x00" * ((55 - len(data)) % 64) + struct.pack("<Q", len(data) * 8)
    a, b, c, d = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476
    for offset in range(0, len(message), 64):
        x = struct.unpack("<16I", message[offset : offset + 64])
        aa, bb, cc, dd = a, b, c, d
        for i in range(16):
            f = (b & c) | (~b & d)
            a, b, c, d = d, rotl(a + f + x[i], (3, 7, 11, 19)[i % 4]), b, c
        for i in range(16):
            k = (i % 4) * 4 + i // 4
            g = (b & c) | (b & d) | (c & d)
            a, b, c, d = d, rotl(a + g + x[k] + 0x5A827999, (3, 5, 9, 13)[i % 4]), b, c
        for i, k in enumerate((0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15)):
            h = b ^ c ^ d
            a, b, c, d = d, rotl(a + h + x[k] + 0x6ED9EBA1, (3, 9, 11, 15)[i % 4]), b, c
        a, b, c, d = (a + aa) & mask, (b + bb) & mask, (c + cc) & mask, (d + dd) & mask
    return struct.pack("<4I", a, b, c, d)


def nt_hash(password: str) -> bytes:
    return md4(password.encode("utf-16-le"))


class RC4:
    """The RC4 stream cipher, one keystream across calls (NTLM sealing is connection-oriented)."""

    def __init__(self, key: bytes) -> None:
        s = list(range(256))
        j = 0
        for i in range(256):
            j = (j + s[i] + key[i % len(key)]) & 0xFF
            s[i], s[j] = s[j], s[i]
        self._s, self._i, self._j = s, 0, 0

    def update(self, data: bytes) -> bytes:
        s, i, j = self._s, self._i, self._j
        out = bytearray(data)
        for n in range(len(out)):
            i = (i + 1) & 0xFF
            si = s[i]
            j = (j + si) & 0xFF
            sj = s[j]
            s[i], s[j] = sj, si
            out[n] ^= s[(si + sj) & 0xFF]
        self._i, self._j = i, j
        return bytes(out)


def hmac_md5(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.md5).digest()


# -- the account ------------------------------------------------------------------------------


class Account:
    """The one logon this stand-in accepts: a user name and the NT hash of its password.

    The file holds ``username=NAME`` and ``nt_hash=HEX`` (what the image build writes: the
    password itself is not in the guest), or ``password=TEXT`` (host tests). User names compare
    case-insensitively, with or without a ``DOMAIN\\`` or ``.\\`` prefix.
    """

    def __init__(self, username: str, hash_: bytes) -> None:
        self.username = username
        self.nt_hash = hash_

    @classmethod
    def load(cls, path: str) -> Account:
        values: dict[str, str] = {}
        with open(path, encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.rstrip("\r\n").partition("=")
                if sep and not key.lstrip().startswith("#"):
                    values[key.strip()] = value
        username = values.get("username", "").strip()
        if not username:
            raise ValueError(f"{path}: no username=")
        if "nt_hash" in values:
            hash_ = bytes.fromhex(values["nt_hash"].strip())
            if len(hash_) != 16:
                raise ValueError(f"{path}: nt_hash= is not 32 hex digits")
        elif values.get("password"):
            hash_ = nt_hash(values["password"])
        else:
            raise ValueError(f"{path}: neither nt_hash= nor password=")
        return cls(username, hash_)

    def user_matches(self, name: str) -> bool:
        return name.rpartition("\\")[2].lower() == self.username.lower()

    def check_password(self, name: str, password: str) -> bool:
        ok = hmac.compare_digest(nt_hash(password), self.nt_hash)
        return ok and self.user_matches(name)


# -- NTLM (MS-NLMP), server side, NTLMv2 only -------------------------------------------------

NTLMSSP = b"NTLMSSP\x00"
NEGOTIATE_UNICODE = 0x00000001
REQUEST_TARGET = 0x00000004
NEGOTIATE_SIGN = 0x00000010
NEGOTIATE_SEAL = 0x00000020
NEGOTIATE_NTLM = 0x00000200
NEGOTIATE_ALWAYS_SIGN = 0x00008000
TARGET_TYPE_SERVER = 0x00020000
NEGOTIATE_EXTENDED_SESSIONSECURITY = 0x00080000
NEGOTIATE_TARGET_INFO = 0x00800000
NEGOTIATE_VERSION = 0x02000000
NEGOTIATE_128 = 0x20000000
NEGOTIATE_KEY_EXCH = 0x40000000
NEGOTIATE_56 = 0x80000000
_CLIENT_CHOSEN = (
    NEGOTIATE_SIGN
    | NEGOTIATE_SEAL
    | NEGOTIATE_ALWAYS_SIGN
    | NEGOTIATE_VERSION
    | NEGOTIATE_128
    | NEGOTIATE_KEY_EXCH
    | NEGOTIATE_56
)
_ALWAYS = (
    NEGOTIATE_UNICODE
    | REQUEST_TARGET
    | NEGOTIATE_NTLM
    | TARGET_TYPE_SERVER
    | NEGOTIATE_EXTENDED_SESSIONSECURITY
    | NEGOTIATE_TARGET_INFO
)
_AV_EOL, _AV_NB_COMPUTER, _AV_NB_DOMAIN, _AV_DNS_COMPUTER, _AV_DNS_DOMAIN = 0, 1, 2, 3, 4
_AV_FLAGS, _AV_TIMESTAMP = 6, 7
_MIC_PRESENT = 0x2


def ntlm_type(token: bytes) -> int:
    if len(token) < 12 or not token.startswith(NTLMSSP):
        return 0
    return int(struct.unpack_from("<I", token, 8)[0])


def _field(message: bytes, at: int) -> bytes:
    length, _, offset = struct.unpack_from("<HHI", message, at)
    if offset + length > len(message):
        raise ValueError("NTLM field outside the message")
    return message[offset : offset + length]


def _av_pairs(data: bytes) -> dict[int, bytes]:
    pairs: dict[int, bytes] = {}
    at = 0
    while at + 4 <= len(data):
        av_id, length = struct.unpack_from("<HH", data, at)
        if av_id == _AV_EOL:
            break
        pairs[av_id] = data[at + 4 : at + 4 + length]
        at += 4 + length
    return pairs


class NtlmServer:
    """One connection's NTLM context: challenge, NTLMv2 check (and MIC), then seal and sign.

    NTLMv1 and anonymous logons are refused. Every domain name is accepted (the account is local).
    """

    def __init__(self, account: Account, machine: str) -> None:
        self.account = account
        self.machine = machine
        self.flags = 0
        self.user = ""
        self._negotiate = b""
        self._challenge = b""
        self._server_challenge = os.urandom(8)
        self._seq_in = self._seq_out = 0
        self._sign_in = self._sign_out = b""
        self._rc4_in: RC4 | None = None
        self._rc4_out: RC4 | None = None

    def challenge(self, negotiate: bytes) -> bytes:
        client_flags = struct.unpack_from("<I", negotiate, 12)[0]
        self.flags = (client_flags & _CLIENT_CHOSEN) | _ALWAYS
        netbios = (
            re.sub(r"[^A-Za-z0-9-]", "-", self.machine.split(".")[0])[:15].upper() or "STANDIN"
        )
        dns = self.machine.lower()
        # FILETIME: 100 ns ticks since 1601-01-01.
        filetime = struct.pack("<Q", int((time.time() + 11644473600) * 10_000_000))
        target = netbios.encode("utf-16-le")
        info = b""
        for av_id, value in (
            (_AV_NB_DOMAIN, target),
            (_AV_NB_COMPUTER, target),
            (_AV_DNS_DOMAIN, dns.encode("utf-16-le")),
            (_AV_DNS_COMPUTER, dns.encode("utf-16-le")),
            (_AV_TIMESTAMP, filetime),
            (_AV_EOL, b""),
        ):
            info += struct.pack("<HH", av_id, len(value)) + value
        header = 56
        # Version: 0.0.0, NTLM revision 15 -- a stand-in does not pretend to a Windows build.
        version = struct.pack("<BBH3xB", 0, 0, 0, 15)
        self._challenge = (
            NTLMSSP
            + struct.pack("<I", 2)
            + struct.pack("<HHI", len(target), len(target), header)
            + struct.pack("<I", self.flags)
            + self._server_challenge
            + b"\x00" * 8
            + struct.pack("<HHI", len(info), len(info), header + len(target))
            + version
            + target
            + info
        )
        self._negotiate = negotiate
        return self._challenge

    def authenticate(self, message: bytes) -> bool:
        """Check an AUTHENTICATE message; on success, derive the sealing and signing keys."""
        try:
            nt_response = _field(message, 20)
            domain = _field(message, 28).decode("utf-16-le")
            user = _field(message, 36).decode("utf-16-le")
            encrypted_key = _field(message, 52)
            flags = struct.unpack_from("<I", message, 60)[0]
        except (ValueError, struct.error, UnicodeDecodeError):
            return False
        if len(nt_response) <= 24 or not self.account.user_matches(user):
            return False  # anonymous (empty) or NTLMv1 (24 bytes): refused
        response_key = hmac_md5(self.account.nt_hash, (user.upper() + domain).encode("utf-16-le"))
        proof, blob = nt_response[:16], nt_response[16:]
        if not hmac.compare_digest(hmac_md5(response_key, self._server_challenge + blob), proof):
            return False
        session_base_key = hmac_md5(response_key, proof)
        if flags & NEGOTIATE_KEY_EXCH and len(encrypted_key) == 16:
            exported = RC4(session_base_key).update(encrypted_key)
        else:
            exported = session_base_key
        av_flags = _av_pairs(blob[28:]).get(_AV_FLAGS, b"\x00\x00\x00\x00")
        if len(av_flags) == 4 and struct.unpack("<I", av_flags)[0] & _MIC_PRESENT:
            if len(message) < 88:
                return False
            zeroed = message[:72] + b"\x00" * 16 + message[88:]
            mic = hmac_md5(exported, self._negotiate + self._challenge + zeroed)
            if not hmac.compare_digest(mic, message[72:88]):
                return False
        self.flags = flags
        self.user = user
        self._derive(exported)
        return True

    def _derive(self, exported: bytes) -> None:
        def key(base: bytes, direction: str, kind: str) -> bytes:
            magic = f"session key to {direction} {kind} key magic constant\x00".encode()
            return hashlib.md5(base + magic).digest()

        if self.flags & NEGOTIATE_128:
            seal_base = exported
        elif self.flags & NEGOTIATE_56:
            seal_base = exported[:7]
        else:
            seal_base = exported[:5]
        self._sign_in = key(exported, "client-to-server", "signing")
        self._sign_out = key(exported, "server-to-client", "signing")
        self._rc4_in = RC4(key(seal_base, "client-to-server", "sealing"))
        self._rc4_out = RC4(key(seal_base, "server-to-client", "sealing"))

    @property
    def can_seal(self) -> bool:
        return self._rc4_in is not None and bool(self.flags & NEGOTIATE_SEAL)

    def unseal(self, sealed: bytes, signature: bytes) -> bytes:
        assert self._rc4_in is not None
        message = self._rc4_in.update(sealed)
        seq = struct.pack("<I", self._seq_in)
        checksum = hmac_md5(self._sign_in, seq + message)[:8]
        if self.flags & NEGOTIATE_KEY_EXCH:
            checksum = self._rc4_in.update(checksum)
        if not hmac.compare_digest(b"\x01\x00\x00\x00" + checksum + seq, signature):
            raise ValueError("the message's NTLM signature is wrong")
        self._seq_in += 1
        return message

    def seal(self, message: bytes) -> tuple[bytes, bytes]:
        assert self._rc4_out is not None
        sealed = self._rc4_out.update(message)
        seq = struct.pack("<I", self._seq_out)
        checksum = hmac_md5(self._sign_out, seq + message)[:8]
        if self.flags & NEGOTIATE_KEY_EXCH:
            checksum = self._rc4_out.update(checksum)
        self._seq_out += 1
        return sealed, b"\x01\x00\x00\x00" + checksum + seq


# MS-WSMV 2.2.9.1.1: the encrypted message is MIME-like, with this boundary and protocol.
_BOUNDARY = b"--Encrypted Boundary"
_SPNEGO_ENCRYPTED = b"application/HTTP-SPNEGO-session-encrypted"
ENCRYPTED_CONTENT_TYPE = (
    f'multipart/encrypted;protocol="{_SPNEGO_ENCRYPTED.decode()}";boundary="Encrypted Boundary"'
)


def decrypt_body(ntlm: NtlmServer, body: bytes) -> bytes:
    parts = [p for p in body.split(_BOUNDARY + b"\r\n") if p]
    message = b""
    for header, payload in zip(parts[0::2], parts[1::2], strict=False):
        match = re.search(rb"Length=(\d+)", header)
        if not match or _SPNEGO_ENCRYPTED not in header:
            raise ValueError("not an HTTP-SPNEGO-session-encrypted part")
        payload = payload.removesuffix(_BOUNDARY + b"--\r\n")
        payload = payload.removeprefix(b"\tContent-Type: application/octet-stream\r\n")
        (length,) = struct.unpack_from("<I", payload, 0)
        signature, sealed = payload[4 : 4 + length], payload[4 + length :]
        plain = ntlm.unseal(sealed, signature)
        if len(plain) != int(match.group(1)):
            raise ValueError("the decrypted length is not the announced one")
        message += plain
    return message


def encrypt_body(ntlm: NtlmServer, message: bytes) -> bytes:
    sealed, signature = ntlm.seal(message)
    return (
        _BOUNDARY
        + b"\r\n\tContent-Type: "
        + _SPNEGO_ENCRYPTED
        + b"\r\n\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length="
        + str(len(message)).encode()
        + b"\r\n"
        + _BOUNDARY
        + b"\r\n\tContent-Type: application/octet-stream\r\n"
        + struct.pack("<I", len(signature))
        + signature
        + sealed
        + _BOUNDARY
        + b"--\r\n"
    )


# -- commands ---------------------------------------------------------------------------------

_POWERSHELL = {"powershell", "powershell.exe", "pwsh", "pwsh.exe"}
_CMD = {"cmd", "cmd.exe"}
# PowerShell parameters that take a value (skipped), by their full names; any prefix matches.
_PS_VALUED = (
    "executionpolicy",
    "inputformat",
    "outputformat",
    "windowstyle",
    "configurationname",
    "psconsolefile",
    "version",
    "workingdirectory",
)


class Plan:
    """What a command line becomes: an argv to run, or a refusal (stderr text, exit code).

    ``note`` is added to stderr when the command ends with 127 (sh's "not found").
    """

    def __init__(
        self, argv: list[str] | None, refusal: str = "", exit_code: int = 1, note: str = ""
    ) -> None:
        self.argv = argv
        self.refusal = refusal
        self.exit_code = exit_code
        self.note = note


def _program(token: str) -> str:
    return re.split(r"[\\/]", token.strip('"'))[-1].lower()


def plan_command(line: str, shell: str) -> Plan:
    """How the stand-in runs a WinRS command line (``rsp:Command`` + ``rsp:Arguments``).

    - ``powershell[.exe]|pwsh ... -EncodedCommand B64`` (or ``-enc``/``-e``/``-ec``): there is no
      PowerShell here; the script (base64 of UTF-16LE) is decoded and run with ``SHELL -c``
      when ``SHELL -n`` can parse it, else refused: exit code 1 and a stderr line saying so.
      ``-Command TEXT`` (or a bare script) likewise. ``-File``, ``-Command -`` and interactive
      PowerShell are refused. Other switches (-NoProfile, -NonInteractive, -ExecutionPolicy X, ...)
      are ignored.
    - ``cmd[.exe] [/s] [/q] [/d] /c|/k REST``: REST runs with ``SHELL -c``; a bare ``cmd`` runs
      ``SHELL`` reading commands from stdin (what pywinrm's own tests do with cmd.exe).
    - anything else: the whole line runs with ``SHELL -c LINE``. cmd.exe syntax is not
      translated (``shutdown /r /t 0`` works because the guest's shutdown understands it).
    """
    spans = [(m.group(), m.end()) for m in re.finditer(r"\S+", line)]
    if not spans:
        return Plan(None, f"{NAME}: empty command line\n")
    program = _program(spans[0][0])
    if program in _POWERSHELL:
        return _plan_powershell(line, spans, shell)
    if program in _CMD:
        for token, end in spans[1:]:
            switch = token.lower()
            if switch in ("/c", "/k"):
                rest = line[end:].strip()
                return Plan([shell, "-c", rest]) if rest else Plan([shell])
            if switch not in ("/s", "/q", "/d"):
                break
        else:
            return Plan([shell])
    return Plan([shell, "-c", line])


def _plan_powershell(line: str, spans: list[tuple[str, int]], shell: str) -> Plan:
    script: str | None = None
    index = 1
    while index < len(spans):
        token, end = spans[index]
        if token[0] not in "-/":
            script = line[end - len(token) :].strip()  # a bare script: -Command implied
            break
        name = token[1:].lower()
        if (name and "encodedcommand".startswith(name)) or name == "ec":
            if index + 1 >= len(spans):
                return Plan(None, f"{NAME}: -EncodedCommand without a value\n")
            try:
                script = base64.b64decode(spans[index + 1][0], validate=True).decode("utf-16-le")
            except ValueError:
                return Plan(None, f"{NAME}: the -EncodedCommand value is not base64 UTF-16LE\n")
            break
        if name and "command".startswith(name):
            script = line[end:].strip()
            if script in ("", "-"):
                return Plan(
                    None,
                    f"{NAME}: PowerShell reading its script from stdin is not "
                    "supported by this stand-in\n",
                )
            break
        if name and "file".startswith(name):
            return Plan(
                None,
                f"{NAME}: powershell -File is not supported by this stand-in "
                "(there is no PowerShell in this guest)\n",
            )
        index += 2 if len(name) >= 2 and any(v.startswith(name) for v in _PS_VALUED) else 1
    if script is None:
        return Plan(None, f"{NAME}: interactive PowerShell is not available in this stand-in\n")
    try:
        check = subprocess.run(
            [shell, "-n", "-c", script], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Plan(None, f"{NAME}: cannot check the script with {shell}: {exc}\n")
    if check.returncode != 0:
        reason = check.stderr.decode("utf-8", "replace").strip()
        return Plan(
            None,
            f"{NAME}: there is no PowerShell in this guest; this stand-in runs PowerShell "
            f"scripts with {shell}, which cannot parse this one: {reason}\n",
        )
    return Plan(
        [shell, "-c", script],
        note=f"{NAME}: this PowerShell script ran with {shell}: there is no PowerShell in "
        "this guest\n",
    )


class Command:
    """One process and its output, as WinRS's Receive hands it out."""

    PIPE_GRACE = 0.5  # after exit, how long output may still arrive from pipes held elsewhere
    MAX_BUFFER = 8 * 1024 * 1024  # unread output per stream before the process is held back

    def __init__(self, command_id: str, line: str) -> None:
        self.id = command_id
        self.line = line
        self.cond = threading.Condition()
        self.out = bytearray()
        self.err = bytearray()
        self.exit_code: int | None = None
        self.exited_at = 0.0
        self.open_pipes = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._note = b""
        self._send_lock = threading.Lock()
        # Held while the process is signalled or reaped (see _reap).
        self._group = threading.Lock()
        self._ended = False
        self._forgotten = False

    def start(self, plan: Plan, cwd: str, env: dict[str, str]) -> None:
        self._note = plan.note.encode()
        if plan.argv is None:
            self.err += plan.refusal.encode()
            self.exit_code = plan.exit_code
            self.exited_at = time.monotonic()
            return
        self.proc = subprocess.Popen(
            plan.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            bufsize=0,
            start_new_session=True,  # its own process group: Signal and Delete kill the group
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.open_pipes = 2
        for stream, buf in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream.fileno(), buf), daemon=True).start()
        threading.Thread(target=self._reap, daemon=True).start()

    def _pump(self, fd: int, buf: bytearray) -> None:
        try:
            while True:
                with self.cond:
                    while len(buf) >= self.MAX_BUFFER and not self._done():
                        self.cond.wait(1.0)  # back-pressure: the writer blocks on a full pipe
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                with self.cond:
                    if not self._done():  # after Done, late output has nowhere to go
                        buf += chunk
                    self.cond.notify_all()
        except OSError:
            pass
        finally:
            with self.cond:
                self.open_pipes -= 1
                self.cond.notify_all()

    def _reap(self) -> None:
        """Wait for the process to end, and leave it a zombie (WNOWAIT).

        Its pid is the id of its process group, which :meth:`kill` signals: while the zombie
        exists no new process can get that pid, so the group cannot be a stranger's. The
        zombie is reaped when the command is forgotten (SIGKILL: Signal terminate, Delete).
        """
        assert self.proc is not None
        info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT)
        assert info is not None
        # Killed by signal N: 128+N, as the shell says.
        code = info.si_status if info.si_code == os.CLD_EXITED else 128 + info.si_status
        with self._group:
            self._ended = True
            if self._forgotten:
                self.proc.wait()
        with self.cond:
            self.exit_code = code
            self.exited_at = time.monotonic()
            self.cond.notify_all()

    def _done(self) -> bool:
        if self.exit_code is None:
            return False
        return self.open_pipes == 0 or time.monotonic() - self.exited_at >= self.PIPE_GRACE

    def send(self, data: bytes, end: bool, timeout: float) -> bool:
        """Write ``data`` to stdin (False: the process did not take it in ``timeout``)."""
        with self._send_lock:
            stdin = self.proc.stdin if self.proc is not None else None
            if stdin is None or stdin.closed:
                return True  # no process, or stdin closed already: Windows drops it too
            fd = stdin.fileno()
            os.set_blocking(fd, False)
            view = memoryview(data)
            deadline = time.monotonic() + timeout
            try:
                while view:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    _, writable, _ = select.select([], [fd], [], left)
                    if writable:
                        view = view[os.write(fd, view) :]
            except (BrokenPipeError, OSError):
                pass  # the process is gone or closed its stdin
            if end:
                stdin.close()
            return True

    def receive(
        self, streams: set[str], timeout: float, budget: int, coalesce: float
    ) -> tuple[bytes, bytes, bool, int] | None:
        """Wait for output or the end; None when ``timeout`` passed with neither."""
        deadline = time.monotonic() + timeout
        with self.cond:

            def pending() -> int:
                return (len(self.out) if "stdout" in streams else 0) + (
                    len(self.err) if "stderr" in streams else 0
                )

            while not pending() and not self._done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                if self.exit_code is not None:
                    left = min(left, self.exited_at + self.PIPE_GRACE - time.monotonic())
                self.cond.wait(max(left, 0.001))
            # A moment more for a command about to end: output and Done in one answer.
            until = min(deadline, time.monotonic() + coalesce)
            while not self._done() and pending() < budget:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            done = self._done()
            if done and self._note and self.exit_code == 127:
                self.err += self._note  # after all of sh's own stderr
            self._note = b"" if done else self._note
            out = bytes(self.out[:budget]) if "stdout" in streams else b""
            del self.out[: len(out)]
            err = bytes(self.err[: budget - len(out)]) if "stderr" in streams else b""
            del self.err[: len(err)]
            finished = done and not pending()
            self.cond.notify_all()  # room in the buffers again
            return out, err, finished, self.exit_code if finished and self.exit_code else 0

    def kill(self, sig: int) -> None:
        """Signal the command's process group; SIGKILL also forgets the process (reaps it).

        Never once it is reaped: its pid, the group's id, may be another process's by then.
        """
        if self.proc is None:
            return
        with self._group:
            if self.proc.returncode is not None:
                return
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            if sig == signal.SIGKILL:
                self._forgotten = True
                if self._ended:
                    self.proc.wait()
        if sig == signal.SIGKILL and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()


class Shell:
    def __init__(self, shell_id: str, cwd: str, env: dict[str, str], idle_timeout: float) -> None:
        self.id = shell_id
        self.cwd = cwd
        self.env = env
        self.idle_timeout = idle_timeout
        self.commands: dict[str, Command] = {}
        self.used = time.monotonic()


class Fault(Exception):
    """A WS-Management fault to answer with (HTTP 500)."""

    def __init__(
        self, wsman_code: int, subcode: str, reason: str, *, code: str = "s:Sender"
    ) -> None:
        super().__init__(reason)
        self.wsman_code = wsman_code
        self.subcode = subcode
        self.reason = reason
        self.code = code


class StandIn:
    """The WS-Man / WinRS state machine: shells, commands, envelopes. No HTTP here."""

    def __init__(
        self,
        *,
        shell: str = "/bin/sh",
        machine: str | None = None,
        workdir: str | None = None,
        max_shells: int = 30,
        idle_timeout: float = 7200.0,
        max_operation_timeout: float = 60.0,
        coalesce: float = 0.05,
        log: Callable[[str], None] = lambda text: None,
    ) -> None:
        self.shell = shell
        self.machine = machine or socket.gethostname()
        self.workdir = workdir or os.path.expanduser("~")
        self.max_shells = max_shells
        self.idle_timeout = idle_timeout
        self.max_operation_timeout = max_operation_timeout
        self.coalesce = coalesce
        self.log = log
        self.shells: dict[str, Shell] = {}
        self.lock = threading.Lock()

    # -- envelopes ----------------------------------------------------------------------------

    def _envelope(self, name: str, relates_to: str, **values: str) -> bytes:
        return (
            TEMPLATES[name]
            .substitute(message_id=new_id(), relates_to=xml_escape(relates_to), **values)
            .encode("utf-8")
        )

    def fault(self, fault: Fault, relates_to: str) -> bytes:
        return self._envelope(
            "fault",
            relates_to,
            code=fault.code,
            subcode=fault.subcode,
            lang="en-US",
            reason=xml_escape(fault.reason),
            wsman_code=str(fault.wsman_code),
            machine=xml_escape(self.machine, attribute=True),
            message=xml_escape(fault.reason),
        )

    # -- requests -----------------------------------------------------------------------------

    def handle(self, soap: bytes, endpoint: str) -> tuple[int, bytes]:
        """One SOAP request -> (HTTP status, response envelope)."""
        message_id = ""
        try:
            try:
                root = ET.fromstring(soap)
            except ET.ParseError as exc:
                raise Fault(
                    ERROR_WSMAN_SCHEMA_VALIDATION_ERROR,
                    "w:SchemaValidationError",
                    f"The request is not well-formed XML: {exc}",
                ) from exc
            header = root.find("s:Header", NS)
            body = root.find("s:Body", NS)
            if header is None or body is None:
                raise Fault(
                    ERROR_WSMAN_SCHEMA_VALIDATION_ERROR,
                    "w:SchemaValidationError",
                    "The request is not a SOAP 1.2 envelope with a Header and a Body.",
                )
            message_id = header.findtext("a:MessageID", "", NS).strip()
            action_uri = header.findtext("a:Action", "", NS).strip()
            action = ACTIONS.get(action_uri)
            if action is None:
                raise Fault(
                    ERROR_WSMAN_ACTION_NOT_SUPPORTED,
                    "a:ActionNotSupported",
                    f"{NAME} does not support the action {action_uri!r}: only WinRS shell "
                    "Create, Command, Send, Receive, Signal and Delete.",
                )
            resource = header.findtext("w:ResourceURI", "", NS).strip()
            if resource.lower() != CMD_RESOURCE_URI:
                raise Fault(
                    ERROR_WSMAN_INVALID_RESOURCE_URI,
                    "a:DestinationUnreachable",
                    f"{NAME} serves only the resource {CMD_RESOURCE_URI}, not {resource!r}.",
                )
            return 200, self._dispatch(action, header, body, message_id, endpoint)
        except Fault as fault:
            return 500, self.fault(fault, message_id)

    def _dispatch(
        self, action: str, header: ET.Element, body: ET.Element, message_id: str, endpoint: str
    ) -> bytes:
        options = {
            (o.get("Name") or ""): (o.text or "")
            for o in header.findall("w:OptionSet/w:Option", NS)
        }
        timeout = min(
            duration_seconds(header.findtext("w:OperationTimeout", None, NS), 60.0),
            self.max_operation_timeout,
        )
        max_envelope = int(header.findtext("w:MaxEnvelopeSize", "153600", NS).strip() or 153600)
        if action == "Create":
            shell = self._create(body)
            return self._envelope(
                "create_response",
                message_id,
                endpoint=xml_escape(endpoint),
                shell_id=shell.id,
            )
        shell = self._shell(header)
        if action == "Delete":
            self._delete(shell)
            return self._envelope("delete_response", message_id)
        if action == "Command":
            command = self._command(shell, body, options)
            return self._envelope("command_response", message_id, command_id=command.id)
        if action == "Send":
            self._send(shell, body, timeout)
            return self._envelope("send_response", message_id)
        if action == "Receive":
            streams, state = self._receive(shell, body, timeout, max_envelope)
            return self._envelope(
                "receive_response", message_id, streams=streams, command_state=state
            )
        self._signal(shell, body)
        return self._envelope("signal_response", message_id)

    def _shell(self, header: ET.Element) -> Shell:
        selector = header.find("w:SelectorSet/w:Selector[@Name='ShellId']", NS)
        shell_id = (selector.text or "").strip() if selector is not None else ""
        with self.lock:
            shell = self.shells.get(shell_id.upper())
            if shell is not None:
                shell.used = time.monotonic()
                return shell
        raise Fault(
            ERROR_WSMAN_UNEXPECTED_SELECTORS,
            "w:InvalidSelectors",
            f"The request for the Windows Remote Shell with ShellId {shell_id} failed because "
            "the shell was not found on the server. Possible causes are: the specified ShellId "
            "is incorrect or the shell no longer exists on the server. Provide the correct "
            "ShellId or create a new shell and retry the operation.",
        )

    def _create(self, body: ET.Element) -> Shell:
        spec = body.find("rsp:Shell", NS)
        cwd = self.workdir
        env = dict(os.environ)
        idle = self.idle_timeout
        if spec is not None:
            cwd = (spec.findtext("rsp:WorkingDirectory", "", NS) or "").strip() or cwd
            for variable in spec.findall("rsp:Environment/rsp:Variable", NS):
                if variable.get("Name"):
                    env[variable.get("Name", "")] = variable.text or ""
            idle = duration_seconds(spec.findtext("rsp:IdleTimeOut", None, NS), idle)
        with self.lock:
            self._reap_idle()
            if len(self.shells) >= self.max_shells:
                raise Fault(
                    ERROR_WSMAN_QUOTA_MAX_SHELLS,
                    "w:QuotaLimit",
                    f"The WS-Management service cannot process the request. This user is "
                    f"allowed a maximum number of {self.max_shells} concurrent shells, which "
                    "has been exceeded. Close existing shells or raise the quota for this user.",
                )
            shell = Shell(new_id(), cwd, env, idle)
            self.shells[shell.id] = shell
        return shell

    def _delete(self, shell: Shell) -> None:
        with self.lock:
            self.shells.pop(shell.id, None)
        for command in list(shell.commands.values()):
            command.kill(signal.SIGKILL)

    def _reap_idle(self) -> None:
        """Delete shells nobody used for their idle timeout (caller holds the lock)."""
        now = time.monotonic()
        for shell in [s for s in self.shells.values() if now - s.used > s.idle_timeout]:
            del self.shells[shell.id]
            for command in shell.commands.values():
                command.kill(signal.SIGKILL)
            self.log(f"shell {shell.id} deleted after {shell.idle_timeout:g} s idle")

    def reap_idle(self) -> None:
        with self.lock:
            self._reap_idle()

    def _command(self, shell: Shell, body: ET.Element, options: dict[str, str]) -> Command:
        line_node = body.find("rsp:CommandLine", NS)
        if line_node is None:
            raise Fault(
                ERROR_WSMAN_INVALID_PARAMETER,
                "w:InvalidParameter",
                "The Command request has no rsp:CommandLine.",
            )
        parts = [(line_node.findtext("rsp:Command", "", NS) or "").strip()]
        parts += [(a.text or "") for a in line_node.findall("rsp:Arguments", NS)]
        line = " ".join(p for p in parts if p)
        command = Command((line_node.get("CommandId") or new_id()).upper(), line)
        plan = plan_command(line, self.shell)
        try:
            command.start(plan, shell.cwd, shell.env)
        except OSError as exc:
            raise Fault(
                ERROR_WSMAN_PROVIDER_FAILURE,
                "w:InternalError",
                f"{NAME} could not start the command in {shell.cwd}: {exc.strerror or exc}",
                code="s:Receiver",
            ) from exc
        with self.lock:
            shell.commands[command.id] = command
        pid = command.proc.pid if command.proc else "refused"
        self.log(f"shell {shell.id} command {command.id} ({pid}): {line[:200]}")
        return command

    def _find(self, shell: Shell, command_id: str | None) -> Command:
        command = shell.commands.get((command_id or "").upper())
        if command is None:
            raise Fault(
                ERROR_WSMAN_INVALID_PARAMETER,
                "w:InvalidParameter",
                f"The shell {shell.id} has no command with CommandId {command_id}.",
            )
        return command

    def _send(self, shell: Shell, body: ET.Element, timeout: float) -> None:
        for stream in body.findall("rsp:Send/rsp:Stream", NS):
            command = self._find(shell, stream.get("CommandId"))
            data = base64.b64decode(stream.text or "")
            end = (stream.get("End") or "").lower() == "true"
            if not command.send(data, end, timeout):
                raise Fault(
                    ERROR_WSMAN_OPERATION_TIMEDOUT, "w:TimedOut", TIMEOUT_TEXT, code="s:Receiver"
                )

    def _receive(
        self, shell: Shell, body: ET.Element, timeout: float, max_envelope: int
    ) -> tuple[str, str]:
        desired = body.find("rsp:Receive/rsp:DesiredStream", NS)
        if desired is None:
            raise Fault(
                ERROR_WSMAN_INVALID_PARAMETER,
                "w:InvalidParameter",
                "The Receive request has no rsp:DesiredStream.",
            )
        command = self._find(shell, desired.get("CommandId"))
        streams = set((desired.text or "stdout stderr").split())
        # Raw bytes that fit the client's MaxEnvelopeSize once base64-encoded, as Windows does.
        budget = max(1024, (max_envelope - 4096) * 3 // 4)
        got = command.receive(streams, timeout, budget, self.coalesce)
        shell.used = time.monotonic()
        if got is None:
            # What Windows answers when a Receive long poll ends with nothing new (recorded).
            raise Fault(
                ERROR_WSMAN_OPERATION_TIMEDOUT, "w:TimedOut", TIMEOUT_TEXT, code="s:Receiver"
            )
        out, err, finished, exit_code = got
        parts = []
        if out:
            parts.append(_stream("stdout", command.id, out))
        if err:
            parts.append(_stream("stderr", command.id, err))
        if finished:
            parts += [_stream(name, command.id, None) for name in ("stdout", "stderr")]
            state = (
                f'<rsp:CommandState CommandId="{command.id}" '
                f'State="{SHELL_URI}/CommandState/Done">\n'
                f"        <rsp:ExitCode>{exit_code}</rsp:ExitCode>\n"
                "    </rsp:CommandState>"
            )
        else:
            running = f"{SHELL_URI}/CommandState/Running"
            state = f'<rsp:CommandState CommandId="{command.id}" State="{running}"/>'
        return "\n".join(parts), state

    def _signal(self, shell: Shell, body: ET.Element) -> None:
        node = body.find("rsp:Signal", NS)
        if node is None:
            raise Fault(
                ERROR_WSMAN_INVALID_PARAMETER,
                "w:InvalidParameter",
                "The Signal request has no rsp:Signal.",
            )
        command = self._find(shell, node.get("CommandId"))
        code = (node.findtext("rsp:Code", "", NS) or "").strip().rsplit("/", 1)[-1]
        if code == "terminate":
            command.kill(signal.SIGKILL)
            with self.lock:
                shell.commands.pop(command.id, None)
        elif code in ("ctrl_c", "ctrl_break"):
            command.kill(signal.SIGINT)
        else:
            raise Fault(
                ERROR_WSMAN_INVALID_PARAMETER,
                "w:InvalidParameter",
                f"{NAME} knows the signals terminate, ctrl_c and ctrl_break, not {code!r}.",
            )

    def close(self) -> None:
        with self.lock:
            shells = list(self.shells.values())
            self.shells.clear()
        for shell in shells:
            for command in shell.commands.values():
                command.kill(signal.SIGKILL)


def _stream(name: str, command_id: str, data: bytes | None) -> str:
    """An ``rsp:Stream`` in the form Windows writes it (attribute order as recorded)."""
    if data is None:
        return f'        <rsp:Stream Name="{name}" CommandId="{command_id}" End="true"/>'
    encoded = base64.b64encode(data).decode("ascii")
    return f'        <rsp:Stream Name="{name}" CommandId="{command_id}">{encoded}</rsp:Stream>'


# -- HTTP -------------------------------------------------------------------------------------
# A small HTTP/1.1 server of its own (keep-alive, Content-Length bodies, a thread per
# connection) rather than http.server: that one imports the email package, and under TCG every
# import is a fraction of a second more before the guest answers.

MAX_BODY = 1024 * 1024  # far above WinRM's 150 KiB MaxEnvelopeSize, plus encryption overhead
IDLE_TIMEOUT = 120.0  # an idle keep-alive connection is closed after this
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Request Entity Too Large",
    500: "Internal Server Error",
}


class HttpError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def read_message(
    rfile: io.BufferedIOBase, limit: int = MAX_BODY
) -> tuple[str, dict[str, str], bytes] | None:
    """One HTTP/1.1 message: its start line, headers (lower-case names; repeated ones joined
    with ", ") and Content-Length body. None at a clean end of the connection."""
    line = rfile.readline(8192)
    while line in (b"\r\n", b"\n"):
        line = rfile.readline(8192)
    if not line:
        return None
    headers: dict[str, str] = {}
    while True:
        raw = rfile.readline(8192)
        if not raw:
            raise HttpError(400, "the connection ended in the headers")
        if raw in (b"\r\n", b"\n"):
            break
        if len(headers) > 100:
            raise HttpError(400, "too many headers")
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep:
            raise HttpError(400, f"not a header: {raw[:80]!r}")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise HttpError(411, "chunked bodies are not supported; send Content-Length")
    try:
        length = int(headers.get("content-length") or 0)
    except ValueError:
        raise HttpError(400, "Content-Length is not a number") from None
    if not 0 <= length <= limit:
        raise HttpError(413, f"a body of {length} bytes")
    body = rfile.read(length) if length else b""
    if len(body) < length:
        raise HttpError(400, "the connection ended in the body")
    return line.decode("latin-1").strip(), headers, body


def http_message(start: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    head = [start, *(f"{name}: {value}" for name, value in headers)]
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class _Connection:
    """Per TCP connection: NTLM authenticates a connection, not a request."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.ntlm: NtlmServer | None = None  # the authenticated NTLM context
        self.ntlm_pending: NtlmServer | None = None  # challenged, not yet authenticated


_Reply = tuple[int, list[tuple[str, str]], bytes]


class Service:
    """WS-Man over HTTP on one listening socket, a thread per connection."""

    def __init__(
        self,
        host: str,
        port: int,
        standin: StandIn,
        account: Account,
        auth: frozenset[str],
        log: Callable[[str], None],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.tls = tls  # an ssl.SSLContext: HTTPS, as Windows's listener on 5986
        self.standin = standin
        self.account = account
        self.auth = auth
        self.log = log
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family, backlog=64)
        self.sock.settimeout(0.2)  # the accept loop looks at stop() this often
        self._stopping = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def serve_forever(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    conn, addr = self.sock.accept()
                except TimeoutError:
                    continue
                except OSError:
                    if self._stopping.is_set():
                        break
                    raise
                threading.Thread(target=self._serve, args=(conn, str(addr[0])), daemon=True).start()
        finally:
            self.sock.close()

    def stop(self) -> None:
        self._stopping.set()

    def _serve(self, conn: socket.socket, peer: str) -> None:
        state = _Connection(peer)
        conn.settimeout(IDLE_TIMEOUT)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except OSError as exc:  # ssl.SSLError is an OSError: a client that did not speak TLS
                self.log(f"{peer}: TLS handshake failed: {exc}")
                conn.close()
                return
        try:
            with conn, conn.makefile("rb") as rfile:
                while True:
                    try:
                        message = read_message(rfile)
                    except HttpError as exc:
                        self.log(f"{peer}: HTTP {exc.status}: {exc}")
                        conn.sendall(self._response(exc.status, [], b"", close=True))
                        return
                    if message is None:
                        return
                    start, headers, body = message
                    method, _, rest = start.partition(" ")
                    path, _, version = rest.rpartition(" ")
                    try:
                        status, extra, payload = self._request(state, method, path, headers, body)
                        close = status in (400, 413)
                    except Exception:  # a bug here: say so, answer 500, drop the connection
                        self.log(f"{peer}: error: {traceback.format_exc().strip()}")
                        status, extra, payload, close = 500, [], b"", True
                    close = (
                        close
                        or version != "HTTP/1.1"
                        or ("close" in headers.get("connection", "").lower())
                    )
                    conn.sendall(self._response(status, extra, payload, close=close))
                    if close:
                        return
        except OSError:
            return  # the client went away (a timeout, a reboot): nothing to report

    def _response(
        self, status: int, headers: list[tuple[str, str]], body: bytes, *, close: bool
    ) -> bytes:
        fixed = [("Server", f"{NAME}/{VERSION}")]
        if close:
            fixed.append(("Connection", "close"))
        start = f"HTTP/1.1 {status} {_REASONS.get(status, '')}".rstrip()
        return http_message(start, fixed + headers, body)

    def _request(
        self, state: _Connection, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> _Reply:
        if path.split("?", 1)[0].lower() != "/wsman":
            return 404, [], b""
        if method != "POST":
            return 405, [("Allow", "POST")], b""
        refusal = self._authenticate(state, headers.get("authorization"))
        if refusal is not None:
            return refusal
        encrypted = headers.get("content-type", "").lower().startswith("multipart/encrypted")
        ntlm = state.ntlm
        if encrypted:
            if ntlm is None or not ntlm.can_seal:
                return 400, [], b""
            try:
                body = decrypt_body(ntlm, body)
            except (ValueError, struct.error) as exc:
                self.log(f"{state.peer}: cannot decrypt: {exc}")
                return 400, [], b""
        if not body:
            return 200, [], b""  # pywinrm's empty POST that sets up the NTLM context
        host = headers.get("host") or self.address[0]
        status, answer = self.standin.handle(body, f"http://{host}/wsman")
        if encrypted and ntlm is not None:
            return status, [("Content-Type", ENCRYPTED_CONTENT_TYPE)], encrypt_body(ntlm, answer)
        return status, [("Content-Type", "application/soap+xml;charset=UTF-8")], answer

    def _unauthorized(self, state: _Connection, why: str, challenge: str | None = None) -> _Reply:
        if why:
            self.log(f"{state.peer}: 401: {why}")
        if challenge is not None:
            return 401, [("WWW-Authenticate", challenge)], b""
        offers = []
        if "ntlm" in self.auth:
            offers.append(("WWW-Authenticate", "Negotiate"))
        if "basic" in self.auth:
            offers.append(("WWW-Authenticate", 'Basic realm="WSMAN"'))
        return 401, offers, b""

    def _authenticate(self, state: _Connection, header: str | None) -> _Reply | None:
        """None when the request may go on; else the 401 (or the NTLM challenge) to send."""
        if not header:
            return None if state.ntlm is not None else self._unauthorized(state, "")
        scheme, _, token = header.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "basic" and "basic" in self.auth:
            try:
                user, _, password = base64.b64decode(token).decode("utf-8").partition(":")
            except ValueError:
                user, password = "", ""
            if self.account.check_password(user, password):
                return None
            return self._unauthorized(state, f"Basic logon refused for user {user!r}")
        if scheme in ("negotiate", "ntlm") and "ntlm" in self.auth:
            try:
                raw = base64.b64decode(token.strip())
            except ValueError:
                raw = b""
            kind = ntlm_type(raw)
            if kind == 1:
                context = NtlmServer(self.account, self.standin.machine)
                challenge = base64.b64encode(context.challenge(raw)).decode()
                state.ntlm, state.ntlm_pending = None, context
                word = "Negotiate" if scheme == "negotiate" else "NTLM"
                return self._unauthorized(state, "", f"{word} {challenge}")
            if kind == 3 and state.ntlm_pending is not None:
                context, state.ntlm_pending = state.ntlm_pending, None
                if context.authenticate(raw):
                    state.ntlm = context
                    return None
                return self._unauthorized(
                    state, f"NTLM logon refused for user {context_user(raw)!r}"
                )
            return self._unauthorized(state, "an NTLM message out of sequence (SPNEGO/Kerberos?)")
        return self._unauthorized(state, f"authentication scheme {scheme!r} is not offered")


def context_user(message: bytes) -> str:
    try:
        return _field(message, 36).decode("utf-16-le")
    except (ValueError, struct.error, UnicodeDecodeError):
        return "?"


# -- main -------------------------------------------------------------------------------------


def _log(text: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {NAME}: {text}\n")
    sys.stderr.flush()


def self_test(shell: str, *, list_modules: bool = False) -> int:
    """Serve one command over HTTP and check the answers: what the image build runs with the
    guest's Python and trimmed standard library, so a module left out fails the build, not the
    guest. ``list_modules``: print every loaded module's file (the build copies these)."""

    def quiet(text: str) -> None:
        """The refusals below are on purpose: not worth a log line."""

    account = Account("self-test", nt_hash("self-test"))
    standin = StandIn(shell=shell, workdir="/", max_operation_timeout=5)
    service = Service("127.0.0.1", 0, standin, account, frozenset({"basic", "ntlm"}), quiet)
    thread = threading.Thread(target=service.serve_forever)
    thread.start()
    basic = "Basic " + base64.b64encode(b"self-test:self-test").decode()
    conn = socket.create_connection(service.address, timeout=10)
    rfile = conn.makefile("rb")

    def post(action: str, body: str, shell_id: str = "", auth: str = basic) -> ET.Element:
        selector = (
            f'<w:SelectorSet><w:Selector Name="ShellId">{shell_id}</w:Selector></w:SelectorSet>'
            if shell_id
            else ""
        )
        envelope = (
            f'<s:Envelope xmlns:s="{NS["s"]}" xmlns:a="{NS["a"]}" xmlns:w="{NS["w"]}" '
            f'xmlns:rsp="{NS["rsp"]}"><s:Header><a:Action>{action}</a:Action>'
            f"<a:MessageID>uuid:{new_id()}</a:MessageID><w:OperationTimeout>PT5S"
            f"</w:OperationTimeout><w:ResourceURI>{CMD_RESOURCE_URI}</w:ResourceURI>{selector}"
            f"</s:Header><s:Body>{body}</s:Body></s:Envelope>"
        ).encode()
        headers = [("Host", "127.0.0.1"), ("Authorization", auth)]
        conn.sendall(http_message("POST /wsman HTTP/1.1", headers, envelope))
        answer = read_message(rfile)
        if answer is None:
            raise RuntimeError(f"{action}: no answer")
        start, answer_headers, data = answer
        status = int(start.split()[1])
        if status == 401:
            raise PermissionError("401")
        if status != 200 or NAME not in answer_headers.get("server", ""):
            raise RuntimeError(f"{action}: {start}: {data[-900:]!r}")
        return ET.fromstring(data)

    try:
        created = post(ACTIONS_BY_NAME["Create"], "<rsp:Shell/>")
        shell_id = created.findtext(".//w:Selector", "", NS)
        line = xml_escape("echo self-test; echo Gr\xfc\xdfe >&2; exit 3")
        started = post(
            ACTIONS_BY_NAME["Command"],
            f"<rsp:CommandLine><rsp:Command>{line}</rsp:Command></rsp:CommandLine>",
            shell_id,
        )
        command_id = started.findtext(".//rsp:CommandId", "", NS)
        out = err = b""
        code = None
        while code is None:
            received = post(
                ACTIONS_BY_NAME["Receive"],
                f'<rsp:Receive><rsp:DesiredStream CommandId="{command_id}">stdout stderr'
                "</rsp:DesiredStream></rsp:Receive>",
                shell_id,
            )
            for stream in received.iterfind(".//rsp:Stream", NS):
                data = base64.b64decode(stream.text or "")
                if stream.get("Name") == "stdout":
                    out += data
                else:
                    err += data
            if received.find(".//rsp:ExitCode", NS) is not None:
                code = int(received.findtext(".//rsp:ExitCode", "", NS))
        signal_body = f'<rsp:Signal CommandId="{command_id}"><rsp:Code>{SHELL_URI}/signal/'
        post(ACTIONS_BY_NAME["Signal"], signal_body + "terminate</rsp:Code></rsp:Signal>", shell_id)
        post(ACTIONS_BY_NAME["Delete"], "", shell_id)
        try:
            post(ACTIONS_BY_NAME["Delete"], "", shell_id)
            raise RuntimeError("a deleted shell still answered")
        except RuntimeError as exc:
            if "500" not in str(exc):
                raise
        try:
            post(ACTIONS_BY_NAME["Create"], "<rsp:Shell/>", auth="Basic eDp5")
            raise RuntimeError("a wrong password was let in")
        except PermissionError:
            pass
        # The NTLM pieces (no client here): a challenge, the ciphers, the framing.
        challenge = NtlmServer(account, "self-test").challenge(
            NTLMSSP + struct.pack("<II", 1, 0xE2088297) + b"\x00" * 16
        )
        sealed = RC4(b"key").update(md4("self-test".encode("utf-16-le")))
        if (out, err, code) != (b"self-test\n", "Grüße\n".encode(), 3) or ntlm_type(challenge) != 2:
            raise RuntimeError(f"unexpected answers: {out!r} {err!r} {code!r}")
        if len(sealed) != 16:
            raise RuntimeError("the ciphers misbehave")
    except Exception:
        _log(f"self-test FAILED: {traceback.format_exc().strip()}")
        return 1
    finally:
        rfile.close()
        conn.close()
        service.stop()
        thread.join()
        standin.close()
    if list_modules:
        for module in list(sys.modules.values()):
            file = getattr(module, "__file__", None)
            if file:
                print(os.path.realpath(file))
    else:
        print(f"{NAME} self-test passed")
    return 0


USAGE = f"""\
usage: compatlab-winrs --account FILE [--listen HOST:PORT] [options]
       compatlab-winrs --nt-hash < PASSWORD_FILE
       compatlab-winrs --self-test [--shell SH]

{NAME}: a stand-in for Windows's WinRM service (the WS-Management + Windows Remote
Shell subset pywinrm uses) that runs commands with /bin/sh. Not Windows.

  --listen HOST:PORT         where to listen (default 0.0.0.0:5985; port 0: any free
                             port; the first line on stdout says which)
  --account FILE             username= and nt_hash= (or password=) lines
  --shell PATH               the shell commands run with (default /bin/sh)
  --workdir DIR              a shell's default working directory (default: ~)
  --auth basic,ntlm          the HTTP authentication offered (default both)
  --tls-cert FILE            serve HTTPS with this PEM certificate (chain) ...
  --tls-key FILE             ... and its PEM private key (as Windows's listener on 5986)
  --announce FILE            once listening, also append a line saying so to FILE
  --max-shells N             concurrent shells (default 30, as Windows' MaxShellsPerUser)
  --idle-timeout SECONDS     a shell nobody uses is deleted after this (default 7200)
  --max-operation-timeout S  cap on a Receive's long poll (default 60, as MaxTimeoutms)
  --nt-hash                  print the NT hash of the first line of stdin, then exit
  --self-test                serve one command on 127.0.0.1, exit 0 if all went right
"""
_VALUED = {
    "--listen": "0.0.0.0:5985",
    "--account": "",
    "--shell": "/bin/sh",
    "--workdir": "",
    "--auth": "basic,ntlm",
    "--tls-cert": "",
    "--tls-key": "",
    "--announce": "",
    "--max-shells": "30",
    "--idle-timeout": "7200",
    "--max-operation-timeout": "60",
}
_FLAGS = {"--nt-hash", "--self-test", "--list-modules", "--help", "-h"}


class UsageError(Exception):
    pass


def parse_args(argv: list[str]) -> tuple[dict[str, str], set[str]]:
    """``--name value``, ``--name=value`` and flags; argparse costs too much startup here."""
    values = dict(_VALUED)
    flags: set[str] = set()
    items = iter(argv)
    for item in items:
        name, eq, value = item.partition("=")
        if name in _FLAGS and not eq:
            flags.add(name)
        elif name in _VALUED:
            if not eq:
                value = next(items, None)  # type: ignore[assignment]
                if value is None:
                    raise UsageError(f"{name} needs a value")
            values[name] = value
        else:
            raise UsageError(f"unknown argument {item!r}")
    return values, flags


def main(argv: list[str] | None = None) -> int:
    try:
        values, flags = parse_args(sys.argv[1:] if argv is None else argv)
        if flags & {"--help", "-h"}:
            sys.stdout.write(USAGE)
            return 0
        if "--nt-hash" in flags:
            password = sys.stdin.readline().rstrip("\r\n")
            if not password:
                raise UsageError("no password on stdin")
            print(nt_hash(password).hex())
            return 0
        if "--self-test" in flags:
            return self_test(values["--shell"], list_modules="--list-modules" in flags)
        if not values["--account"]:
            raise UsageError("--account is required")
        auth = frozenset(a.strip().lower() for a in values["--auth"].split(",") if a.strip())
        if not auth or auth - {"basic", "ntlm"}:
            raise UsageError("--auth takes basic and/or ntlm")
        host, _, port = values["--listen"].rpartition(":")
        try:
            numbers = [int(values[n]) for n in ("--max-shells", "--idle-timeout")]
            numbers.append(int(float(values["--max-operation-timeout"])))
            listen_port = int(port)
        except ValueError as exc:
            raise UsageError(f"not a number: {exc}") from None
        try:
            account = Account.load(values["--account"])
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read the account: {exc}") from None
    except UsageError as exc:
        sys.stderr.write(f"{USAGE}\ncompatlab-winrs: error: {exc}\n")
        return 2
    standin = StandIn(
        shell=values["--shell"],
        workdir=values["--workdir"] or None,
        max_shells=numbers[0],
        idle_timeout=numbers[1],
        max_operation_timeout=numbers[2],
        log=_log,
    )
    tls = None
    if values["--tls-cert"] or values["--tls-key"]:
        if not (values["--tls-cert"] and values["--tls-key"]):
            sys.stderr.write("compatlab-winrs: error: --tls-cert and --tls-key go together\n")
            return 2
        import ssl  # only here: the HTTP-only stand-in in the tiny guest never loads it

        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            tls.load_cert_chain(values["--tls-cert"], values["--tls-key"])
        except (OSError, ssl.SSLError) as exc:
            sys.stderr.write(f"compatlab-winrs: error: cannot load the TLS certificate: {exc}\n")
            return 2
    service = Service(
        host.strip("[]") or "0.0.0.0", listen_port, standin, account, auth, _log, tls
    )

    def stop(signum: int, frame: object) -> None:
        service.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def reaper() -> None:
        while True:
            time.sleep(30)
            standin.reap_idle()

    threading.Thread(target=reaper, daemon=True).start()
    bound_host, bound_port = service.address
    # The first stdout line says where it listens (tests read the port from it).
    print(
        f"{NAME} {VERSION} listening on {bound_host}:{bound_port} "
        f"({'https' if tls else 'http'}; auth: {', '.join(sorted(auth))}; "
        f"shell: {values['--shell']})",
        flush=True,
    )
    _log(f"listening on {bound_host}:{bound_port}; a stand-in for Windows's WinRM service")
    if values["--announce"]:
        try:
            with open(values["--announce"], "a", encoding="utf-8") as console:
                console.write(f"compatlab-guest: {NAME} listening on {bound_host}:{bound_port}\n")
        except OSError as exc:
            _log(f"cannot announce on {values['--announce']}: {exc}")
    try:
        service.serve_forever()
    finally:
        standin.close()
        _log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
