"""No committed text file holds an absolute path of a home, temporary or work folder (issue 23):
results JSON records paths relative to the repository or to the run's output folder
(``lib.relative_paths``), and the commands in README.md and docs/ run from a
fresh clone. Placeholders (``/data/imagenet``, ``/path/to/...``) are not such folders.
"""
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# a path under one of these folders of the root (or a Windows user folder); not inside a URL or a
# longer path (the character before the slash is no letter, digit, dot, slash or colon)
FOLDERS = ('home', 'Users', 'root', 'tmp', 'var' + re.escape('/') + 'tmp', 'private' + re.escape('/') + 'var', 'work')
PATTERN = re.compile(r'(?<![\w./:])/(?:' + '|'.join(FOLDERS) + r')/|\b[A-Za-z]:\\+Users\\+')


def committed_text_files():
    if not (REPO / '.git').exists():
        pytest.skip('not a git checkout')
    try:
        names = subprocess.run(['git', 'ls-files', '-z'], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f'git ls-files failed: {e}')
    for name in names.decode().split('\0'):
        path = REPO / name
        if not name or not path.is_file():
            continue
        data = path.read_bytes()
        if b'\0' in data[:8192]:
            continue  # binary (images, weights)
        try:
            yield name, data.decode('utf-8')
        except UnicodeDecodeError:
            continue


def absolute_paths(text):
    """``[(line number, line)]`` of the lines holding such a path."""
    return [(i, line.strip()[:200]) for i, line in enumerate(text.splitlines(), 1) if PATTERN.search(line)]


def test_no_committed_file_holds_an_absolute_path():
    found = {name: hits for name, text in committed_text_files() if (hits := absolute_paths(text))}
    assert not found, 'absolute paths of this machine in committed files (make them relative):\n' + '\n'.join(
        f'{name}:{i}: {line}' for name, hits in found.items() for i, line in hits)


def test_the_pattern():
    slash = '/'  # (split from the folder names, so that this file holds no such path)
    bad = [f'{slash}home{slash}me/x.json', f'--out {slash}tmp{slash}t.md', f'"{slash}work{slash}main/output/demo"',
           f'{slash}Users{slash}me/x', 'C:' + '\\Users\\me\\x', f'{slash}root{slash}.cache']
    good = ['output/demo/x.json', '/data/imagenet', '/path/to/photos', f'https://huggingface.co{slash}home{slash}x',
            f'docs{slash}work{slash}notes.md', f'benchmarks{slash}tmp{slash}x', '~/x']
    assert all(absolute_paths(t) for t in bad), [t for t in bad if not absolute_paths(t)]
    assert not any(absolute_paths(t) for t in good), [t for t in good if absolute_paths(t)]
