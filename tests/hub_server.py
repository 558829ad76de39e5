"""A stand-in for the Hugging Face Hub's file endpoints on 127.0.0.1, for tests without internet.

It answers ``huggingface_hub.hf_hub_download`` the way the Hub does:

* ``HEAD``/``GET /{org}/{name}/resolve/{revision}/{path}`` with ``X-Repo-Commit``, ``ETag``
  and ``Content-Length``; revision = a branch name or a commit hash;
* weight files (``*.safetensors``, ``*.bin``) are "LFS" files: the resolve URL answers
  ``302`` with ``X-Linked-Etag`` / ``X-Linked-Size`` and a ``Location`` on a second server
  (another origin, like the Hub's CDN), which serves the bytes (``Range`` supported, ``206``);
* errors: ``404`` with ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` /
  ``EntryNotFound`` (the latter with ``X-Repo-Commit``);
* ``GET /api/models/{org}/{name}[/revision/{rev}]``: a minimal ``model_info`` JSON;
* ``GET /api/whoami-v2``: the user of ``Authorization: Bearer HubServer.TOKEN``, else ``401``.

Faults, for reliability tests: ``server.fail(filename, *faults)`` makes the next GETs of that
file's bytes misbehave, one fault per GET: ``'close-mid-file'`` (half the body, then the
connection is closed), ``'drop'`` (the headers, then the connection is closed: no progress)
or ``'short-length'`` (a ``Content-Length`` 10 bytes short of the file). huggingface_hub
resumes a download (``Range``) after a dropped connection, up to 5 times in a row without
progress, sleeping 1 s between tries.

``patch_hub_env(monkeypatch, ...)`` points huggingface_hub (already imported, so its
``constants`` are patched as well as the environment) at the server and a cache folder.
"""
import hashlib
import http.server
import json
import threading
from pathlib import Path
from typing import Dict, Optional
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = ('.safetensors', '.bin', '.pth', '.pt')


class HubServer:
    TOKEN = 'hf_test_token'  # the one token /api/whoami-v2 accepts

    def __init__(self):
        self.repos: Dict[str, Dict] = {}      # repo_id -> {'refs': {name: commit}, 'commits': {commit: {path: bytes}}}
        self.blobs: Dict[str, tuple] = {}     # sha256 -> (filename, bytes), served by the "CDN"
        self.faults: Dict[str, list] = {}     # filename -> faults for the next GETs
        self.requests = []                    # (server, method, path, range header)
        self.lock = threading.Lock()
        self._servers = []

    # repo content -----------------------------------------------------------------------
    def add_folder(self, repo_id: str, folder, revision: str = 'main') -> str:
        folder = Path(folder)
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}
        return self.add_files(repo_id, files, revision)

    def add_files(self, repo_id: str, files: Dict[str, bytes], revision: str = 'main') -> str:
        """Add a commit holding ``files`` and point branch ``revision`` at it; returns the commit."""
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + b'\0' + files[name])
        commit = digest.hexdigest()
        with self.lock:
            repo = self.repos.setdefault(repo_id, {'refs': {}, 'commits': {}})
            repo['commits'][commit] = dict(files)
            repo['refs'][revision] = commit
            for name, data in files.items():
                self.blobs[hashlib.sha256(data).hexdigest()] = (name.split('/')[-1], data)
        return commit

    def fail(self, filename: str, *faults: str):
        with self.lock:
            self.faults.setdefault(filename, []).extend(faults)

    # lifecycle --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self._servers[0].server_address[1]}'

    @property
    def cdn_url(self) -> str:
        return f'http://127.0.0.1:{self._servers[1].server_address[1]}'

    def start(self) -> 'HubServer':
        for role in ('hub', 'cdn'):
            server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
            server.daemon_threads = True
            server.hub, server.role = self, role
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self):
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._route(head=True)

    def do_GET(self):
        self._route(head=False)

    # routing ------------------------------------------------------------------------------
    def _route(self, head: bool):
        hub: HubServer = self.server.hub
        path = urlsplit(self.path).path
        with hub.lock:
            hub.requests.append((self.server.role, self.command, path, self.headers.get('Range')))
        parts = [unquote(p) for p in path.strip('/').split('/')]
        if self.server.role == 'cdn':
            blob = hub.blobs.get(parts[-1])
            if blob is None:
                return self._error(404, 'EntryNotFound', 'blob not found')
            return self._content(blob[1], head, fault_key=blob[0])
        if parts[:2] == ['api', 'whoami-v2']:
            if self.headers.get('Authorization') != f'Bearer {hub.TOKEN}':
                return self._error(401, None, 'Invalid credentials in Authorization header')
            return self._content(json.dumps({'type': 'user', 'name': 'tester'}).encode(), head,
                                 headers={'Content-Type': 'application/json'})
        if parts[:2] == ['api', 'models'] and len(parts) >= 4:
            return self._model_info('/'.join(parts[2:4]), parts[5] if len(parts) >= 6 else 'main', head)
        if len(parts) < 5 or parts[2] != 'resolve':
            return self._error(404, None, 'not found')
        repo_id, revision, filename = '/'.join(parts[:2]), parts[3], '/'.join(parts[4:])
        commit, files = self._lookup(repo_id, revision)
        if files is None:
            return
        if filename not in files:
            return self._error(404, 'EntryNotFound', f'{filename} does not exist', {'X-Repo-Commit': commit})
        data = files[filename]
        etag = hashlib.sha256(data).hexdigest()
        headers = {'X-Repo-Commit': commit, 'ETag': f'"{etag}"'}
        if filename.endswith(LFS_SUFFIXES):
            headers.update({'X-Linked-Etag': f'"{etag}"', 'X-Linked-Size': str(len(data)),
                            'Location': f'{hub.cdn_url}/cdn/{etag}', 'Content-Length': '0'})
            return self._send(302, headers)
        return self._content(data, head, fault_key=filename.split('/')[-1], headers=headers)

    def _lookup(self, repo_id: str, revision: str):
        hub: HubServer = self.server.hub
        repo = hub.repos.get(repo_id)
        if repo is None:
            self._error(404, 'RepoNotFound', 'Repository not found')
            return None, None
        commit = repo['refs'].get(revision) or (revision if revision in repo['commits'] else None)
        if commit is None:
            self._error(404, 'RevisionNotFound', 'Invalid rev id: ' + revision)
            return None, None
        return commit, repo['commits'][commit]

    def _model_info(self, repo_id: str, revision: str, head: bool):
        commit, files = self._lookup(repo_id, revision)
        if files is None:
            return
        body = json.dumps({'id': repo_id, 'modelId': repo_id, 'sha': commit, 'private': False,
                           'siblings': [{'rfilename': f} for f in sorted(files)]}).encode()
        self._content(body, head, headers={'Content-Type': 'application/json'})

    # responses ------------------------------------------------------------------------------
    def _send(self, status: int, headers: Dict[str, str], body: bytes = b''):
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header('Connection', 'close')
        self.end_headers()
        if body:
            self.wfile.write(body)
        self.close_connection = True

    def _error(self, status: int, code: Optional[str], message: str, extra: Optional[Dict] = None):
        headers = dict(extra or {}, **{'X-Error-Message': message, 'Content-Length': '0'})
        if code:
            headers['X-Error-Code'] = code
        self._send(status, headers)

    def _content(self, data: bytes, head: bool, fault_key: Optional[str] = None, headers: Optional[Dict] = None):
        hub: HubServer = self.server.hub
        headers = dict(headers or {})
        status, start = 200, 0
        ranged = self.headers.get('Range', '')
        if ranged.startswith('bytes=') and ranged[6:].endswith('-'):
            start = int(ranged[6:-1])
            status = 206
            headers['Content-Range'] = f'bytes {start}-{len(data) - 1}/{len(data)}'
        body = data[start:]
        fault = None
        if not head and fault_key:
            with hub.lock:
                pending = hub.faults.get(fault_key)
                fault = pending.pop(0) if pending else None
        if fault == 'short-length':
            body = body[:-10]
        headers['Content-Length'] = str(len(body))
        if head:
            return self._send(status, headers)
        if fault in ('close-mid-file', 'drop'):  # then the connection is closed
            self._send(status, headers, body[:len(body) // 2] if fault == 'close-mid-file' else b'')
            return
        self._send(status, headers, body)


def patch_hub_env(monkeypatch, hf_home, endpoint: Optional[str] = None, offline: bool = False) -> Path:
    """Point huggingface_hub at ``endpoint`` (the server's url) and a cache under ``hf_home``,
    online or offline. Returns the hub cache folder."""
    from huggingface_hub import constants
    hf_home = Path(hf_home)
    cache = hf_home / 'hub'
    env = {'HF_HOME': str(hf_home), 'HF_HUB_CACHE': str(cache), 'HF_HUB_OFFLINE': '1' if offline else '0',
           'HF_HUB_DISABLE_TELEMETRY': '1', 'HF_HUB_DISABLE_PROGRESS_BARS': '1'}
    if endpoint:
        env['HF_ENDPOINT'] = endpoint
        monkeypatch.setattr(constants, 'ENDPOINT', endpoint)
        template = endpoint + '/{repo_id}/resolve/{revision}/{filename}'
        monkeypatch.setattr(constants, 'HUGGINGFACE_CO_URL_TEMPLATE', template)
        from huggingface_hub import hf_api  # the module-level HfApi behind huggingface_hub.model_info & co
        monkeypatch.setattr(hf_api.api, 'endpoint', endpoint)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # every path constant under the real HF_HOME (cache, token, assets, xet, agent registry ...)
    home = constants.HF_HOME
    for name in dir(constants):
        value = getattr(constants, name)
        if name.isupper() and isinstance(value, str) and home and value.startswith(home):
            monkeypatch.setattr(constants, name, str(hf_home) + value[len(home):])
    monkeypatch.setattr(constants, 'HF_HOME', str(hf_home))
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', offline)
    monkeypatch.delenv('HF_TOKEN', raising=False)
    return cache
