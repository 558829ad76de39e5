"""Every code block of README.md and docs/**/*.md runs as pasted (issue 15: the Python API block used
``x`` and ``target`` without defining them; issue 23: the docs pages are covered too).

The blocks run in order, README.md first, then docs/**/*.md (docs/study/ too), in one temporary folder, as a reader
pastes them:

* python blocks: each in a fresh namespace (each imports what it uses);
* bash blocks of the README's "Your own photos": every command as typed; ``timm-ssod`` runs through its entry
  point (``timm_ssod.cli.main``) in this process;
* the Hub: a server on 127.0.0.1 (``tests/hub_server.py``, ``HF_ENDPOINT``) stands in for
  huggingface.co; downloads are real HTTP requests to it, uploads go into it through a stand-in
  of ``HfApi.create_repo`` / ``upload_folder`` (the Hub's upload protocol is not emulated).

The other bash blocks need what a test cannot have: the demo (minutes) and its outputs, the test
suite itself, ImageNet under /data, several processes (torchrun). Each of their commands is
parsed by the command's own argument parser (flags, choices, ``--config`` files), and the files
they name in the repository must exist, so a renamed flag or file fails here.
"""
import csv
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

pytestmark = pytest.mark.tiny_fits  # detectors fitted on tens of images (tests/conftest.py)

REPO = Path(__file__).resolve().parents[1]
RUN_SECTIONS = {('README.md', 'Your own photos')}  # bash blocks that run; python blocks always run


def pages():
    """README.md, then every page of docs/ and its sub-folders (docs/study/), relative paths."""
    return ['README.md'] + sorted(p.relative_to(REPO).as_posix() for p in (REPO / 'docs').rglob('*.md'))


def readme_blocks(pages_=None):
    """``[(where, language, (page, section), code)]`` of the fenced blocks of the pages, in order."""
    blocks = []
    for page in pages_ or pages():
        text = (REPO / page).read_text(encoding='utf-8')
        for i, m in enumerate(re.finditer(r'^```(\w*)\n(.*?)^```', text, re.S | re.M)):
            headings = re.findall(r'^## (.+)$', text[:m.start()], re.M)
            blocks.append((f'{page} block {i}', m.group(1), (page, headings[-1] if headings else ''), m.group(2)))
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
        [(i, lang) for i, lang, _, _ in blocks if lang not in ('python', 'bash', 'text')]
    assert any(section in RUN_SECTIONS and lang == 'bash' for _, lang, section, _ in blocks)
    assert {page for _, _, (page, _), _ in blocks} >= {'README.md', 'docs/benchmark.md', 'docs/study/regime.md',
                                                       'docs/study/standins.md', 'docs/decisions.md', 'docs/guide.md'}


def test_readme_code_blocks_run_as_pasted(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'weights').symlink_to(REPO / 'weights')  # the blocks run from a clone's root: its shipped weights
    with HubServer() as server:
        patch_hub_env(monkeypatch, tmp_path / 'hf', server.url)
        StandInHfApi.server = server
        monkeypatch.setattr(huggingface_hub, 'HfApi', StandInHfApi)
        ran = []
        for index, lang, section, code in readme_blocks():
            where = f'{index} ({lang}, section {section[1]!r})'
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
    # calibrate saved a calibrated model; predict decided on every image, ID and OOD folders alike
    assert (tmp_path / 'output/calibrated/my_photos/ssod.safetensors').is_file()
    with open(tmp_path / 'output/predict/my_photos/predictions.csv', newline='') as f:
        predictions = list(csv.DictReader(f))
    assert len(predictions) == 30 + 30 and all(row['decision'] in ('ID', 'OOD') for row in predictions)
    assert re.search(r'p-value [0-9.]+ (ID|OOD)', out)  # the calibrated model from Python
    assert server.repos.keys() >= {'your-name/my-photos', 'org/ssod-resnet50'}  # both pushes arrived
    assert len(ran) >= 6


def _check_parses(argv, where):
    argv = argv[:-1] if argv[-1] == '&' else argv  # a command sent to the background
    while argv and re.fullmatch(r'[A-Z_]+=\S*', argv[0]):  # VAR=value before the command
        argv = argv[1:]
    if argv[:1] == ['python'] and argv[1].startswith(('benchmarks/', 'examples/')):
        script = REPO / argv[1]
        assert script.is_file(), (where, argv)
        spec = importlib.util.spec_from_file_location(f'readme_{script.stem}', script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if hasattr(module, 'parse_args'):  # the script's own argument parser
            module.parse_args(argv[2:])
    elif argv[0] == 'bash':
        assert (REPO / argv[1]).is_file(), (where, argv)
    elif argv[:2] == ['pip', 'install']:  # this package, with extras it declares
        pyproject = (REPO / 'pyproject.toml').read_text()
        for target in [a for a in argv[2:] if not a.startswith('-')]:
            m = re.fullmatch(r'\.(?:\[([\w,]+)\])?', target)
            assert m, (where, argv)
            extras = [e for e in (m.group(1) or '').split(',') if e]
            assert all(re.search(rf'^{e} = ', pyproject, re.M) for e in extras), (where, argv)
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
                _check_parses(argv, f'{index} (section {section[1]!r})')
                checked += 1
    assert checked >= 10


def _anchors(text):
    """GitHub's anchors of a page's headings."""
    return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-') for h in re.findall(r'^#+ (.+)$', text, re.M)}


def test_links_between_the_pages_resolve():
    """Every relative link of README.md and docs/*.md names a file of the repository, and a heading
    of it when it has a #fragment (sections moved between pages keep their links)."""
    checked = 0
    for page in pages():
        text = re.sub(r'^```.*?^```', '', (REPO / page).read_text(encoding='utf-8'), flags=re.S | re.M)
        for link in re.findall(r'\]\(([^)\s]+)\)', text):
            if re.match(r'\w+:', link):
                continue
            path, _, fragment = link.partition('#')
            target = (REPO / page).parent / path if path else REPO / page
            assert target.exists(), f'{page}: {link} names no file'
            if fragment:
                assert fragment in _anchors(target.read_text(encoding='utf-8')), f'{page}: {link} names no heading'
            checked += 1
    assert checked >= 20
    assert {'docs/study/README.md', 'docs/guide.md', 'docs/decisions.md'} <= set(pages())  # docs/study/ is read


def test_links_stay_inside_the_repository():
    """No page links to, or names, a file outside the repository (a design note or a shared folder
    beside the clone): a reader of a clone has only the clone. What a page needs is said on it."""
    for page in pages():
        text = (REPO / page).read_text(encoding='utf-8')
        for link in re.findall(r'\]\(([^)\s]+)\)', text):
            if re.match(r'\w+:', link) or not link.partition('#')[0]:
                continue
            target = ((REPO / page).parent / link.partition('#')[0]).resolve()
            assert REPO in target.parents, f'{page}: {link} leaves the repository'
        for path in re.findall(r'(?<![\w/.])((?:\.\./)+[\w.-]+)', text):  # a relative path written as text
            assert REPO in ((REPO / page).parent / path).resolve().parents, f'{page}: {path} leaves the repository'
        names = {p.name for p in REPO.rglob('*.md') if '.venv' not in p.parts}
        for name in re.findall(r'\b([A-Z][A-Z_]+\.md)\b', text):  # an upper-case note named in words
            assert name in names, f'{page} names {name}, which is not in the repository'


IN_PROGRESS = set()  # docs pages named before they are written (none now)


def test_docs_pages_named_in_the_code_exist():
    """Every ``docs/<page>.md`` named in a committed text file (docstrings, CLI help, scripts, the
    pages themselves) exists, so a page moved into docs/study/ leaves no stale name behind."""
    names = subprocess.run(['git', 'ls-files'], cwd=REPO, capture_output=True, text=True).stdout.split()
    if not names:
        pytest.skip('not a git checkout')
    stale = []
    for name in names:
        if not name.endswith(('.py', '.md', '.sh', '.toml', '.yaml', '.cfg')) or not (REPO / name).is_file():
            continue
        for doc in set(re.findall(r'(?<![\w/.])docs/[\w/.-]*?\.md\b', (REPO / name).read_text(encoding='utf-8'))):
            if not (REPO / doc).is_file() and doc not in IN_PROGRESS:
                stale.append(f'{name}: {doc}')
    assert not stale, 'pages named that do not exist:\n' + '\n'.join(stale)


def test_the_readme_writes_its_own_photo_layout(tmp_path, monkeypatch):
    """Issue 31: the layout the README shows (``my_photos/train/cat/*.jpg``) is what its
    stand-in block writes, so that the blocks after it run on that layout ("From Python"
    globbed ``*.png`` on a ``*.jpg`` layout: IndexError)."""
    blocks = [b for b in readme_blocks(['README.md']) if b[2] == ('README.md', 'Your own photos')]
    layout = next(code for _, lang, _, code in blocks if lang == 'text')
    exts = set(re.findall(r'\*\.(\w+)', layout))
    assert len(exts) == 1, layout
    writer = next(code for _, lang, _, code in blocks if lang == 'python' and 'write_image_folder' in code)
    monkeypatch.chdir(tmp_path)
    exec(compile(writer, 'README stand-in block', 'exec'), {'__name__': '__main__'})
    written = {p.suffix[1:] for p in tmp_path.rglob('*') if p.is_file()}
    assert written == exts, (written, exts)


def test_the_readme_note_on_the_timm_safetensors_names_the_runs_model_kwargs():
    """Issue 31: ``model_best_timm.safetensors`` loads silently into a stock timm model built
    without the run's ``--model-kwargs`` (other logits): the note and the "From Python" block
    name the class count and the kwargs of the README's own train command."""
    text = (REPO / 'README.md').read_text(encoding='utf-8')
    train = next(argv for _, lang, section, code in readme_blocks(['README.md'])
                 if lang == 'bash' and section == ('README.md', 'Your own photos')
                 for argv in commands(code) if argv[:2] == ['timm-ssod', 'train'])
    kwargs = ', '.join(train[train.index('--model-kwargs') + 1:][:1])  # output_stride=16
    note = text[text.index('`model_best_timm.safetensors`'):][:400]
    assert kwargs in note and 'num_classes=3' in note, note
    block = next(code for _, lang, section, code in readme_blocks(['README.md']) if 'model_best_timm' in code)
    assert f"timm.create_model('resnet10t', num_classes=3, {kwargs}," in block
