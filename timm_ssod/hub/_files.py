"""Reading a model folder, on the Hugging Face Hub or on disk, safely and with clear errors.

A *source* is where a folder written by ``save_pretrained`` lives: a Hub repo (``org/name``,
optionally ``org/name@revision``) or a local folder. Every file is fetched through
``huggingface_hub.hf_hub_download`` (Hub: its cache, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``,
resumable downloads into ``*.incomplete`` files that are only renamed into the cache once
complete) and every failure is re-raised as one of two errors that name the source, the
file and the way out:

* ``HubError`` (an ``OSError``): the file could not be fetched (no such repo / revision /
  file, offline and not cached, network failure, interrupted download);
* ``CheckpointError`` (a ``ValueError``): the file was fetched but is unusable (invalid
  ``config.json``, truncated or corrupt ``model.safetensors``, a pickle-only repo without
  ``allow_pickle=True``).

Weights are read from ``model.safetensors`` only. ``pytorch_model.bin`` (a pickle) is read
only when the caller opts in with ``allow_pickle=True``, and then with
``torch.load(weights_only=True)``, which refuses any pickled object that is not a tensor or
a plain container. Nothing from a repo is ever imported or executed.
"""
import json
from pathlib import Path
from typing import Dict, Optional

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from huggingface_hub.utils import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from timm.models._hub import hf_split

from .._util import first_line
from ..checkpoints import CheckpointError, load_safetensors, read_checkpoint
from ._offline import offline_if_unreachable

from huggingface_hub.errors import RemoteEntryNotFoundError

WEIGHTS_NAME = 'model.safetensors'
SSOD_WEIGHTS_NAME = 'ssod.safetensors'  # the OOD head and the calibration, beside timm's weights
PICKLE_WEIGHTS_NAME = 'pytorch_model.bin'
CONFIG_NAME = 'config.json'
OOD_HEAD_PREFIX = 'ood_head.'


class HubError(OSError):
    """A model file could not be fetched from the Hub or a local folder."""


class Source:
    """Where a saved model folder lives: ``Source('hf-hub', 'org/name@rev')`` or
    ``Source('local-dir', '/path/to/folder')`` (the part after timm's name prefix)."""

    def __init__(self, kind: str, name: str, cache_dir=None):
        if kind not in ('hf-hub', 'local-dir'):
            raise ValueError(f'unknown model source {kind!r}')
        self.kind, self.name, self.cache_dir = kind, str(name), cache_dir
        self.repo_id, self.revision = hf_split(self.name) if kind == 'hf-hub' else (None, None)

    @classmethod
    def from_pretrained_cfg(cls, cfg: Optional[Dict], cache_dir=None) -> Optional['Source']:
        """The source timm recorded in a pretrained_cfg (``hf_hub_id`` / ``file``), if any."""
        cfg = cfg or {}
        if cfg.get('source') == 'hf-hub' and cfg.get('hf_hub_id'):
            return cls('hf-hub', cfg['hf_hub_id'], cache_dir)
        if cfg.get('source') == 'local-dir' and cfg.get('file'):
            return cls('local-dir', cfg['file'], cache_dir)
        return None

    @property
    def model_name(self) -> str:
        """The timm model name that loads this source."""
        return f'{self.kind}:{self.name}'

    def __str__(self) -> str:
        if self.kind == 'local-dir':
            return f"folder '{self.name}'"
        return f"Hub repo '{self.repo_id}'" + (f" at revision '{self.revision}'" if self.revision else '')

    def fetch(self, filename: str, optional: bool = False) -> Optional[str]:
        """Local path of ``filename`` (downloaded into the Hub cache if needed). A missing
        file is ``None`` when ``optional``, else a ``HubError``."""
        if self.kind == 'local-dir':
            folder = Path(self.name)
            if not folder.is_dir():
                raise HubError(f'{self} does not exist or is not a folder (model name {self.model_name!r}).')
            path = folder / filename
            if path.is_file():
                return str(path)
            if optional:
                return None
            raise HubError(f'{self} has no {filename}: it is not a folder written by save_pretrained / '
                           f'timm save_for_hf.')
        return self._fetch_hub(filename, optional)

    def _fetch_hub(self, filename: str, optional: bool) -> Optional[str]:
        user_offline = hf_constants.is_offline_mode()
        try:
            with offline_if_unreachable() as unreachable:  # no ~25 s of retries when nothing answers
                return hf_hub_download(self.repo_id, filename, revision=self.revision, cache_dir=self.cache_dir,
                                       library_name='timm_ssod')
        except RevisionNotFoundError as e:
            raise HubError(f"{self}: revision '{self.revision}' does not exist. Give a branch, tag or commit of "
                           f"the repo after '@', or leave '@...' out for the default branch.") from e
        except RepositoryNotFoundError as e:  # GatedRepoError is a subclass
            raise HubError(f"Hub repo '{self.repo_id}' was not found at {hf_constants.ENDPOINT}: check the repo "
                           'id; a private or gated repo needs a token (`hf auth login` or HF_TOKEN).') from e
        except LocalEntryNotFoundError as e:  # not cached, and the Hub was not asked or not reachable
            if optional and self._known_missing(filename):
                return None
            if user_offline:
                raise HubError(
                    f'{filename} of {self} is not in the local Hub cache and HF_HUB_OFFLINE=1 forbids downloading '
                    f'it. Download it once while online (unset HF_HUB_OFFLINE, or run `hf download '
                    f'{self.repo_id}`), or load a local copy of the folder with \'local-dir:/path/to/folder\'.'
                ) from e
            raise HubError(
                f'{filename} of {self} is not in the local Hub cache and the Hub at {hf_constants.ENDPOINT} could '
                f'not be reached ({unreachable or first_line(e.__cause__ or e).rstrip(". ")}). Check the connection (or '
                f"HF_ENDPOINT), or load a local copy of the folder with 'local-dir:/path/to/folder'.") from e
        except RemoteEntryNotFoundError as e:
            if optional:
                return None
            raise HubError(f'{self} has no file {filename}: it is not a model saved by timm_ssod '
                           f'save_pretrained / timm push_to_hf_hub.') from e
        except (ValueError, TypeError):  # invalid repo id or arguments: already clear
            raise
        except Exception as e:  # transfer failures: interrupted stream, size mismatch, HTTP 5xx ...
            raise HubError(
                f'downloading {filename} of {self} failed: {first_line(e).rstrip(". ")}. The cache holds no partial '
                f'{filename} (only a *.incomplete file may remain); call again to retry.') from e

    def _known_missing(self, filename: str) -> bool:
        """True when the cache recorded that the repo has no such file (offline fallback)."""
        cached = try_to_load_from_cache(self.repo_id, filename, cache_dir=self.cache_dir, revision=self.revision)
        return cached is not None and not isinstance(cached, str)


def read_config(source: Source) -> Dict:
    """The parsed ``config.json`` of a source."""
    path = source.fetch(CONFIG_NAME)
    try:
        with open(path, 'r', encoding='utf-8') as f:
            cfg = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f'{CONFIG_NAME} of {source} ({path}) is not valid JSON: {e}') from e
    if not isinstance(cfg, dict) or not isinstance(cfg.get('architecture'), str):
        raise CheckpointError(f'{CONFIG_NAME} of {source} ({path}) has no "architecture": it is not a timm '
                              'model config.')
    return cfg


def read_state_dict(source: Source, allow_pickle: bool = False) -> Dict[str, torch.Tensor]:
    """The weights of a source: ``model.safetensors``; ``pytorch_model.bin`` only with
    ``allow_pickle=True`` (and then with ``torch.load(weights_only=True)``)."""
    path = source.fetch(WEIGHTS_NAME, optional=True)
    if path is not None:
        return load_safetensors(path, str(source))
    if not allow_pickle:
        raise CheckpointError(
            f'{source} has no {WEIGHTS_NAME}. Weights are only read from safetensors by default, since '
            f'{PICKLE_WEIGHTS_NAME} is a pickle. If you trust this repo, pass allow_pickle=True to '
            f'create_model (it is then read with torch.load(weights_only=True)), or convert it to safetensors.')
    path = source.fetch(PICKLE_WEIGHTS_NAME, optional=True)
    if path is None:
        raise HubError(f'{source} has neither {WEIGHTS_NAME} nor {PICKLE_WEIGHTS_NAME}: no weights to load.')
    return read_checkpoint(path, use_ema=False, what=f'{PICKLE_WEIGHTS_NAME} of {source}')[0]


def split_ood_head(state_dict: Dict[str, torch.Tensor]):
    """``(backbone_state_dict, ood_head_state_dict)``, the latter without the ``ood_head.`` prefix."""
    n = len(OOD_HEAD_PREFIX)
    ood = {k[n:]: v for k, v in state_dict.items() if k.startswith(OOD_HEAD_PREFIX)}
    backbone = {k: v for k, v in state_dict.items() if not k.startswith(OOD_HEAD_PREFIX)}
    return backbone, ood
