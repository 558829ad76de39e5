"""Every code block of README.md runs as pasted (issue 15: the Python API block used ``x`` and
``target`` without defining them).

The blocks run in README order in one temporary folder, as a reader pastes them:

* python blocks: each in a fresh namespace (each imports what it uses);
* bash blocks of "Your own photos": every command as typed; ``timm-ssod`` runs through its entry
  point (``timm_ssod.cli.main``) in this process;
* the Hub: a server on 127.0.0.1 (``tests/hub_server.py``, ``HF_ENDPOINT``) stands in for
  huggingface.co; downloads are real HTTP requests to it, uploads go into it through a stand-in
  of ``HfApi.create_repo`` / ``upload_folder`` (the Hub's upload protocol is not emulated).

The other bash blocks need what a test cannot have: the demo (minutes) and its outputs, the test
suite itself, ImageNet under /data, several processes (torchrun). Each of their commands is
parsed by the command's own argument parser (flags, choices, ``--config`` files), and the files
they name in the repository must exist, so a renamed flag or file fails here.
"""
import importlib.util
import re
import shlex
import subprocess
import types
from pathlib import Path

import huggingface_hub
import pytest

from timm_ssod import cli
from timm_ssod.train import parse_args

from hub_server import HubServer, patch_hub_env

REPO = Path(__file__).resolve().parents[1]
RUN_SECTIONS = {'Your own photos'}  # bash blocks that run; python blocks always run


def readme_blocks():
    """``[(index, language, section, code)]`` of README.md's fenced blocks."""
    text = (REPO / 'README.md').read_text(encoding='utf-8')
    blocks = []
    for i, m in enumerate(re.finditer(r'^```(\w*)\n(.*?)^```', text, re.S | re.M)):
        headings = re.findall(r'^## (.+)$', text[:m.start()], re.M)
        blocks.append((i, m.group(1), headings[-1] if headings else '', m.group(2)))
    return blocks


def commands(code: str):
    """The commands of a bash block: continuation lines joined, comments dropped, shlex-split."""
    return [argv for line in code.replace('\\\n', ' ').splitlines() if (argv := shlex.split(line, comments=True))]


class StandInHfApi:
    """``HfApi``'s upload calls, storing into the loopback Hub (``server``)."""
    server = None

    def __init__(self, token=None, **kwargs):
        pass

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        return types.SimpleNamespace(repo_id=repo_id)

    def create_branch(self, repo_id, branch, exist_ok=False, **kwargs):
        pass

    def upload_folder(self, repo_id, folder_path, revision=None, **kwargs):
        commit = self.server.add_folder(repo_id, folder_path, revision or 'main')
        return types.SimpleNamespace(commit_url=f'{self.server.url}/{repo_id}/commit/{commit}', oid=commit)


def test_every_block_is_python_bash_or_text():
    blocks = readme_blocks()
    assert blocks and {lang for _, lang, _, _ in blocks} <= {'python', 'bash', 'text'}, \
        [(i, lang) for i, lang, _, _ in blocks]
    assert any(section in RUN_SECTIONS and lang == 'bash' for _, lang, section, _ in blocks)


def test_readme_code_blocks_run_as_pasted(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with HubServer() as server:
        patch_hub_env(monkeypatch, tmp_path / 'hf', server.url)
        StandInHfApi.server = server
        monkeypatch.setattr(huggingface_hub, 'HfApi', StandInHfApi)
        ran = []
        for index, lang, section, code in readme_blocks():
            where = f'README block {index} ({lang}, section {section!r})'
            if lang == 'python':
                exec(compile(code, where, 'exec'), {'__name__': '__main__'})
                ran.append(index)
            elif lang == 'bash' and section in RUN_SECTIONS:
                for argv in commands(code):
                    if argv[0] == 'timm-ssod':
                        assert cli.main(argv[1:]) == 0, (where, argv, capsys.readouterr().err[-2000:])
                    else:
                        assert subprocess.run(argv, cwd=tmp_path).returncode == 0, (where, argv)
                ran.append(index)
    out = capsys.readouterr().out
    # "Your own photos": the class names of the folder reach eval, visualize and predict
    assert 'Classes (3): disc, square, triangle' in out
    assert 'classes: disc, square, triangle' in out
    assert "['disc', 'square', 'triangle']" in out
    assert re.search(r'-> (disc|square|triangle) P\(in-distribution\) = ', out)
    assert server.repos.keys() >= {'your-name/my-photos', 'org/ssod-resnet50'}  # both pushes arrived
    assert len(ran) >= 5


def _check_parses(argv, where):
    argv = argv[:-1] if argv[-1] == '&' else argv  # a command sent to the background
    if argv[:1] == ['python'] and argv[1].startswith('benchmarks/'):
        script = REPO / argv[1]
        assert script.is_file(), (where, argv)
        spec = importlib.util.spec_from_file_location(f'readme_{script.stem}', script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if hasattr(module, 'parse_args'):  # the script's own argument parser
            module.parse_args(argv[2:])
    elif argv[0] == 'bash':
        assert (REPO / argv[1]).is_file(), (where, argv)
    elif argv[0] == 'torchrun':
        module = argv.index('-m')
        assert argv[module + 1] == 'timm_ssod.train', (where, argv)
        parse_args(argv[module + 2:])
    elif argv[:2] == ['timm-ssod', 'train']:
        parse_args(argv[2:])
    elif argv[0] == 'timm-ssod':
        cli.build_parser().parse_args(argv[1:])
    else:
        pytest.fail(f'{where}: a command this test does not know: {argv}')


def test_commands_of_the_other_bash_blocks_parse(monkeypatch):
    monkeypatch.chdir(REPO)  # --config examples/*.yaml are read relative to the repository
    checked = 0
    for index, lang, section, code in readme_blocks():
        if lang == 'bash' and section not in RUN_SECTIONS:
            for argv in commands(code):
                _check_parses(argv, f'README block {index} (section {section!r})')
                checked += 1
    assert checked >= 10
