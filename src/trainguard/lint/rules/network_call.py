"""``lint.network-call``: training code that talks to the network on its own.

A training step reads data and talks to its peers through the process group. Raw
sockets, mail, FTP and SSH clients, and ``curl | sh`` in training code are command
and control or exfiltration channels; HTTP downloads are common but worth seeing,
and become serious when what is sent includes the environment, the host identity
or file contents.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from trainguard.core.findings import Severity
from trainguard.lint.engine import FileContext, Hit, Rule, RuleInfo, describe
from trainguard.lint.shell import command_text, pipes_to_shell, programs
from trainguard.lint.sources import Source

_HTTP_PREFIXES = (
    "requests.",
    "httpx.",
    "urllib.request.",
    "urllib3.",
    "http.client.",
    "aiohttp.",
    "websocket.",
    "websockets.",
)
_EXFIL_CLIENTS = frozenset(
    {
        "smtplib.SMTP",
        "smtplib.SMTP_SSL",
        "smtplib.LMTP",
        "ftplib.FTP",
        "ftplib.FTP_TLS",
        "paramiko.SSHClient",
        "paramiko.Transport",
        "paramiko.client.SSHClient",
        "telnetlib.Telnet",
        "socketserver.TCPServer",
        "xmlrpc.client.ServerProxy",
    }
)
_SOCKET_CONNECT = frozenset({"socket.create_connection", "socket.create_server"})
_SOCKET_METHODS = frozenset({"connect", "connect_ex", "sendto", "sendall", "send"})
_HTTP_SHELL = frozenset({"curl", "wget"})
_REMOTE_SHELL = frozenset(
    {"nc", "ncat", "netcat", "socat", "ssh", "scp", "sftp", "telnet", "ftp", "rsync"}
)
_LEAKED = frozenset({Source.ENV, Source.HOST, Source.FILE_READ})
_TARGETED = frozenset({Source.RANK, Source.WORLD_SIZE, Source.HOST, Source.RANDOM, Source.TIMEBOMB})

INFO = RuleInfo(
    id="lint.network-call",
    title="network call",
    catches=(
        "socket.create_connection and connect/send on sockets, smtplib/ftplib/paramiko/"
        "telnetlib clients, subprocess nc/ssh/scp/socat (high), curl/wget (medium), "
        "`| sh` (critical), requests/httpx/urllib/http.client calls (low; high when they "
        "send environment, host or file data, medium when rank- or scale-conditional)"
    ),
    rationale=(
        "A login backdoor needs a channel: command and control, or exfiltration of keys "
        "and environment. Training talks to peers through its process group, not sockets."
    ),
    fix=(
        "Fetch data sets and weights before the run (or through the data library's "
        "documented loader); report metrics through the experiment tracker's client."
    ),
    severity="low-critical",
)


def _socket_receiver(ctx: FileContext, node: ast.AST) -> bool:
    if isinstance(node, ast.Call):
        return ctx.resolve(node.func) in ("socket.socket", "socket.create_connection")
    if isinstance(node, ast.Name):
        scope = ctx.flow.scope_of(node)
        return any(_socket_receiver(ctx, v) for v in ctx.flow.values_of(node.id, scope))
    return False


def _payload(ctx: FileContext, call: ast.Call) -> frozenset[Source]:
    kinds: frozenset[Source] = frozenset()
    for arg in call.args[1:]:
        kinds |= ctx.flow.taint(arg)
    for keyword in call.keywords:
        if keyword.arg in ("data", "json", "params", "headers", "files", "body", "content"):
            kinds |= ctx.flow.taint(keyword.value)
    return kinds & _LEAKED


def _is_exception(qualname: str) -> bool:
    """``requests.exceptions.HTTPError(...)`` builds an exception, it does not connect."""
    last = qualname.rsplit(".", 1)[-1]
    return ".exceptions." in qualname or last.endswith(("Error", "Exception", "Warning"))


def _conditions(ctx: FileContext, node: ast.AST) -> frozenset[Source]:
    kinds: frozenset[Source] = frozenset()
    for condition in ctx.flow.conditions(node):
        kinds |= condition.kinds & _TARGETED
    return kinds


def check(ctx: FileContext) -> Iterator[Hit]:
    """Yield network access from training code."""
    for call in ctx.calls():
        qualname = ctx.resolve(call.func) or ""
        text = command_text(ctx, call)
        if text is not None:
            words = programs(text)
            if pipes_to_shell(text) and words & _HTTP_SHELL:
                yield Hit(call, Severity.CRITICAL, "pipes a download into a shell")
            elif words & _REMOTE_SHELL:
                program = sorted(words & _REMOTE_SHELL)[0]
                yield Hit(call, Severity.HIGH, f"runs `{program}`: a remote channel")
            elif words & _HTTP_SHELL:
                program = sorted(words & _HTTP_SHELL)[0]
                yield Hit(call, Severity.MEDIUM, f"runs `{program}` to reach the network")
            continue
        if qualname in _EXFIL_CLIENTS:
            yield Hit(call, Severity.HIGH, f"{qualname} opens a mail/file/shell channel")
            continue
        method = call.func.attr if isinstance(call.func, ast.Attribute) else ""
        if qualname in _SOCKET_CONNECT or (
            method in _SOCKET_METHODS
            and isinstance(call.func, ast.Attribute)
            and _socket_receiver(ctx, call.func.value)
        ):
            leaked = _payload(ctx, call)
            if call.args and method in ("send", "sendall", "sendto"):
                leaked |= ctx.flow.taint(call.args[0]) & _LEAKED
            severity = Severity.HIGH if leaked else Severity.MEDIUM
            suffix = f" sending {describe(leaked)}" if leaked else ""
            yield Hit(call, severity, f"raw socket {qualname or method}{suffix}", leaked)
            continue
        if qualname.startswith(_HTTP_PREFIXES) and not _is_exception(qualname):
            leaked = _payload(ctx, call)
            targeted = _conditions(ctx, call)
            if leaked:
                yield Hit(call, Severity.HIGH, f"{qualname} sends {describe(leaked)}", leaked)
            elif targeted:
                yield Hit(
                    call,
                    Severity.MEDIUM,
                    f"{qualname} runs only depending on {describe(targeted)}",
                    targeted,
                )
            else:
                yield Hit(call, Severity.LOW, f"{qualname} reaches the network")


RULE = Rule(info=INFO, check=check)
