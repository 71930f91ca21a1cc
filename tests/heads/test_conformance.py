"""Every head, tile level and slide level, against its own declaration (mito.heads.params), in the spirit of
scikit-learn's parametrize_with_checks: the declaration lists every constructor option, every value it refuses is a
one-line HeadError naming the head, the option and the allowed values, and each head fits, saves and loads back to
the same probabilities on real features (the legacy store: 30 AMi-Br crops through efficientnet_lite0).

A new head registered with register_head (or a new MIL head) is picked up here with no change to this file."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

from mito.heads import head_class, head_names, make_head, mil_head_names
from mito.heads.base import HeadError
from mito.heads.base import load_head as load_tile_head
from mito.heads.mil import MIL_PARAMS, MILHead, load_mil_head, make_mil_head
from mito.heads.params import balance_mode

STORE = Path(__file__).resolve().parents[1] / "assets" / "legacy" / "store.zarr"
KEY = "efficientnet_lite0:z1:rgb"
QUICK = {"mlp": {"epochs": 5, "hidden": 16}, "linear": {"epochs": 5}, "lightgbm": {"n_estimators": 20}}
NEEDS = {"text-linear": {"text_embeddings": "text.npz"}}  # options a head cannot be built without (validation only)
FIT_SKIPS = {"text-linear": "needs the class text embeddings of a vision-language backbone (tests/heads/test_zeroshot.py fits it)"}


def _tile_cases() -> list[tuple[str, str, object]]:
    cases = []
    for name in head_names():
        for key, p in head_class(name).param_spec.items():
            cases += [(name, key, v) for v in p.invalid_values()]
    return cases


def _mil_cases() -> list[tuple[str, str, object]]:
    return [(name, key, v) for name in mil_head_names() for key, p in MIL_PARAMS.items() for v in p.invalid_values()]


@pytest.mark.parametrize("name", head_names())
def test_tile_head_declares_every_option(name: str) -> None:
    cls = head_class(name)
    assert set(cls.param_spec) == set(inspect.signature(cls.__init__).parameters) - {"self"}
    make_head(name, **NEEDS.get(name, {}))  # the defaults are allowed by the declaration


def test_mil_heads_declare_every_option() -> None:
    assert set(MIL_PARAMS) == set(MILHead().params())
    for name in mil_head_names():
        make_mil_head(name)


def _check_message(e: HeadError, name: str, key: str) -> None:
    msg = str(e)
    assert "\n" not in msg and name in msg and key in msg, msg


@pytest.mark.parametrize(("name", "key", "value"), _tile_cases(), ids=lambda v: repr(v)[:20])
def test_tile_head_refuses_what_its_declaration_refuses(name: str, key: str, value: object) -> None:
    with pytest.raises(HeadError) as e:
        make_head(name, **{**NEEDS.get(name, {}), key: value})
    _check_message(e.value, name, key)
    if key != "text_embeddings" or value not in (None, ""):  # a missing file gets its own, longer hint
        assert head_class(name).param_spec[key].allowed() in str(e.value)


@pytest.mark.parametrize(("name", "key", "value"), _mil_cases(), ids=lambda v: repr(v)[:20])
def test_mil_head_refuses_what_its_declaration_refuses(name: str, key: str, value: object) -> None:
    with pytest.raises(HeadError) as e:
        make_mil_head(name, **{key: value})
    _check_message(e.value, name, key)
    assert MIL_PARAMS[key].allowed() in str(e.value)


def test_an_unknown_option_names_the_head_and_what_it_takes() -> None:
    with pytest.raises(HeadError, match=r"head 'knn' has no option hidden \(it takes: .*n_neighbors"):
        make_head("knn", hidden=3)


@pytest.mark.parametrize("name", [n for n in head_names() if "balance" in head_class(n).param_spec])
def test_balance_takes_one_meaning_and_its_old_spellings(name: str) -> None:
    for old, new in ((True, "weights"), (False, "none")):
        assert make_head(name, **NEEDS.get(name, {}), balance=old).balance is old and balance_mode(old) == new
        make_head(name, **NEEDS.get(name, {}), balance=new)
    make_mil_head("abmil", balance="weights")
    make_mil_head("abmil", balance=False)


@pytest.fixture(scope="module")
def real() -> tuple[np.ndarray, np.ndarray]:
    from mito.store import open_store

    with open_store(STORE) as s:
        return s.read([KEY]).astype(np.float32), s.tiles["mitosis"].astype(str).to_numpy()


@pytest.mark.parametrize("name", head_names())
def test_tile_head_fits_saves_and_loads_the_same(name: str, real: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    if name in FIT_SKIPS:
        pytest.skip(FIT_SKIPS[name])
    X, y = real
    head = make_head(name, **QUICK.get(name, {})).fit(X[:20], y[:20], X[20:], y[20:])
    want = head.predict_proba(X)
    assert want.shape == (len(X), 2) and np.allclose(want.sum(1), 1)
    head.save(tmp_path / name)
    back = load_tile_head(tmp_path / name)
    assert type(back) is type(head) and back.get_params() == head.get_params()
    np.testing.assert_array_equal(back.predict_proba(X), want)


@pytest.mark.parametrize("name", mil_head_names())
def test_mil_head_fits_saves_and_loads_the_same(name: str, tmp_path: Path) -> None:
    from mito.heads.bags import BagReader, make_bags
    from mito.store import open_store

    with open_store(STORE) as s:
        bags = make_bags(s.tiles, "dataset", "slide", min_per_class=1)
        reader = BagReader(s, [KEY])
        order = np.arange(len(bags))
        head = make_mil_head(name, epochs=3, hidden=8, attention=4).fit(reader, bags, order[::2], order[1::2])
        want, _, att = head.predict_proba(reader, bags)
        head.save(tmp_path / name)
        back = load_mil_head(tmp_path / name)
        got, _, att_back = back.predict_proba(reader, bags)
    assert back.params() == head.params()
    np.testing.assert_array_equal(got, want)
    for a, b in zip(att, att_back):
        np.testing.assert_array_equal(a, b)


def test_cli_param_help_comes_from_the_declaration() -> None:
    """fit-head -p help prints one line per declared option of --head (tile or slide level), with its allowed values."""
    from typer.testing import CliRunner

    from mito.cli import app

    runner = CliRunner()
    for args, spec in ((["--head", "knn"], head_class("knn").param_spec), (["--level", "slide", "--head", "abmil"], MIL_PARAMS)):
        r = runner.invoke(app, ["fit-head", "--store", "unused.zarr", "--out", "unused", "-p", "help", *args])
        assert r.exit_code == 0, r.output
        lines = r.output.strip().splitlines()
        assert [ln.split(":")[0] for ln in lines] == list(spec)
        for ln, p in zip(lines, spec.values()):
            assert p.allowed() in ln
    r = runner.invoke(app, ["fit-head", "--store", "unused.zarr", "--out", "unused", "-p", "help", "--head", "nope"])
    assert r.exit_code == 2 and "unknown head 'nope'" in r.output
