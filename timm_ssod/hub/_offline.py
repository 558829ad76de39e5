"""Fail fast when the Hugging Face Hub cannot be reached.

huggingface_hub retries a request that fails to connect 5 times, sleeping 1, 2, 4, 8 and 8 s
(``http_backoff``), before it falls back to its cache; timm then asks for a second file
(``pytorch_model.bin`` after ``model.safetensors``): ``pretrained=True`` without a network took
~54 s and printed 20 "Retrying in Ns" lines before failing. A connection that is refused, or a
host name that does not resolve, will not come back within those seconds, so one TCP connect
to the endpoint (or to the proxy that requests would go through) decides first: when it fails,
huggingface_hub runs in offline mode for the call (``constants.HF_HUB_OFFLINE``), which
answers from the local cache at once or fails at once. Slow or flaky networks that do connect
keep huggingface_hub's retries.
"""
import socket
import urllib.request
from contextlib import contextmanager
from typing import Iterator, Optional, Tuple
from urllib.parse import urlsplit

from huggingface_hub import constants

__all__ = ['unreachable_reason', 'offline_if_unreachable', 'PROBE_TIMEOUT']

PROBE_TIMEOUT = 5.0  # seconds for the TCP connect; huggingface_hub's own HEAD timeout is 10 s


def _target(endpoint: str) -> Tuple[str, int]:
    """(host, port) that a request to ``endpoint`` connects to: the endpoint, or its proxy."""
    url = urlsplit(endpoint)
    host, port = url.hostname or '', url.port or (443 if url.scheme == 'https' else 80)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        p = urlsplit(proxy if '://' in proxy else f'http://{proxy}')
        return p.hostname or host, p.port or (443 if p.scheme == 'https' else 80)
    return host, port


def unreachable_reason(endpoint: Optional[str] = None, timeout: float = PROBE_TIMEOUT) -> Optional[str]:
    """None when a TCP connection to the Hub endpoint (``HF_ENDPOINT``) opens; otherwise why not
    (``HF_HUB_OFFLINE is set``, ``ConnectionRefusedError: ...``, ``gaierror: ...``)."""
    if constants.is_offline_mode():
        return 'HF_HUB_OFFLINE is set'
    endpoint = endpoint or constants.ENDPOINT
    host, port = _target(endpoint)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        text = e.strerror or str(e) or 'no answer'
        return f'{endpoint} cannot be reached: {type(e).__name__}: {text}'
    return None


@contextmanager
def offline_if_unreachable(endpoint: Optional[str] = None) -> Iterator[Optional[str]]:
    """Within the block huggingface_hub is offline (cache only, no retries) when the endpoint
    cannot be reached; yields ``unreachable_reason()`` (None: online as usual)."""
    reason = unreachable_reason(endpoint)
    if reason is None or constants.HF_HUB_OFFLINE:
        yield reason
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield reason
    finally:
        constants.HF_HUB_OFFLINE = False
