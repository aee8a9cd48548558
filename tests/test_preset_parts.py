"""Presets composed of parts keep their written form.

tests/data/preset_records.json was written by the flat `Preset` of commit 5c15fe9, before presets were composed of
parts: `to_dict()` and `repr()` of every preset registered then and of a few custom ones (the recipes in `CUSTOM`
below). Manifests and run records hold `to_dict()`; cached simulations are keyed by the digest of `repr()` (now
`legacy_repr()`). If either changed, datasets, runs and caches made before would stop being recognised.
"""
import dataclasses
import json
from pathlib import Path

import pytest

from deeplense_fastai.core import DeepLenseError
from deeplense_fastai.simulate import (EUCLID_VIS_2021, FLAT_FIELDS, PRESETS, Cosmology, DeepLenseSubhalos, Instrument,
                                       Knots, MainLens, Observation, Preset, Source, Subhalos, Vortex, get_preset)

RECORDS = json.loads((Path(__file__).parent / "data" / "preset_records.json").read_text())
CUSTOM = {
    "Preset()": lambda: Preset(),
    "Preset(name='mine', classes=('cdm',))": lambda: Preset(name="mine", classes=("cdm",)),
    "get_preset('model_ii', npix=32)": lambda: get_preset("model_ii", npix=32),
    "get_preset('model_i', vortex='segment', noise='none')": lambda: get_preset("model_i", vortex="segment", noise="none"),
    "get_preset('model_ii', subhalos=Subhalos(n_mean=10.), knots=Knots(n=(1, 3)))":
        lambda: get_preset("model_ii", subhalos=Subhalos(n_mean=10.), knots=Knots(n=(1, 3))),
}


@pytest.mark.parametrize("name", sorted(RECORDS["to_dict"]))
def test_registered_preset_writes_the_same_record(name):
    p = PRESETS[name]
    assert p.to_dict() == RECORDS["to_dict"][name]
    assert list(p.to_dict()) == list(RECORDS["to_dict"][name])              # the same key order in the JSON files too
    assert p.legacy_repr() == RECORDS["repr"][name]                         # the cache key of its simulations
    assert Preset.from_dict(RECORDS["to_dict"][name]) == p                  # an old manifest or run record loads


@pytest.mark.parametrize("key", sorted(CUSTOM))
def test_custom_preset_writes_the_same_record(key):
    p = CUSTOM[key]()
    assert p.to_dict() == RECORDS["custom_to_dict"][key]
    assert p.legacy_repr() == RECORDS["repr"][key]
    assert Preset.from_dict(json.loads(json.dumps(RECORDS["custom_to_dict"][key]))) == p


def test_cached_simulation_key_is_unchanged(tmp_path, monkeypatch):
    """cached_simulation names its folder by the digest of the recipe string the flat preset printed."""
    import hashlib
    from deeplense_fastai import dataset
    monkeypatch.setenv("DEEPLENSE_CACHE", str(tmp_path))
    monkeypatch.setattr(dataset, "write_dataset", lambda path, *a, **k: Path(path).mkdir(parents=True))   # no simulation
    want = hashlib.sha256(RECORDS["repr"]["model_ii"].encode()).hexdigest()[:8]
    assert dataset.cached_simulation("model_ii", 4, 0).name == f"model_ii-{want}-n4-seed0"


BAD = [(Instrument, dict(npix=7), "Instrument: npix must be a whole number >= 8, got 7"),
       (Instrument, dict(npix=64.5), "Instrument: npix must be a whole number"),
       (Instrument, dict(psf_fwhm=-0.1), "Instrument: psf_fwhm must be None or >= 0 arcsec"),
       (Instrument, dict(supersample=0), "Instrument: supersample must be a whole number >= 1"),
       (Observation, dict(noise="poisson"), "Observation: noise must be one of"),
       (Observation, dict(background_rms=-1.), "Observation: background_rms must be >= 0"),
       (Observation, dict(exposure=(0., 10.)), "Observation: exposure must be a (low, high) pair"),
       (Observation, dict(noiseless_scale=0.), "Observation: noiseless_scale must be positive"),
       (Cosmology, dict(H0=-70.), "Cosmology: H0 must be positive"),
       (Cosmology, dict(Om0=1.5), "Cosmology: Om0 must lie in (0, 1]"),
       (Cosmology, dict(z_source=0.4), "Cosmology: the source must lie behind the lens"),
       (Cosmology, dict(z_source_convention=0.1), "Cosmology: z_source_convention must be None or behind the lens"),
       (Cosmology, dict(distances="comoving"), "Cosmology: distances must be 'angular' or 'deeplensesim'"),
       (MainLens, dict(halo_mass=0.), "MainLens: halo_mass must be a positive number"),
       (MainLens, dict(gamma1=1.2), "MainLens: shear (gamma1, gamma2) must have modulus < 1"),
       (Source, dict(amp=None, magnitude=None), "Source: give amp or magnitude"),
       (Source, dict(R=0.), "Source: R must be a positive radius"),
       (Source, dict(e1=0.8, e2=0.8), "Source: the ellipticity (e1, e2) must have modulus < 1"),
       (Source, dict(offset=-1.), "Source: offset must be >= 0 arcsec"),
       (DeepLenseSubhalos, dict(n=-1), "DeepLenseSubhalos: n must be a whole number"),
       (DeepLenseSubhalos, dict(n=0, poisson=True), "DeepLenseSubhalos: n must be a whole number (>= 1 with poisson)"),
       (DeepLenseSubhalos, dict(m_min=1e10, m_max=1e6), "DeepLenseSubhalos: masses must satisfy 0 < m_min <= m_max"),
       (DeepLenseSubhalos, dict(slope=-1.), "DeepLenseSubhalos: slope must lie in [-3, 0] and not be -1"),
       (DeepLenseSubhalos, dict(r_min=2., r_max=1.), "DeepLenseSubhalos: radii must satisfy 0 <= r_min <= r_max"),
       (Vortex, dict(mass=0.), "Vortex: mass must be positive"),
       (Vortex, dict(points=0), "Vortex: points must be a whole number >= 1"),
       (Vortex, dict(log10_m=(-22., -24.)), "Vortex: log10_m must be a (low, high) pair"),
       (Vortex, dict(kind="line"), "Vortex: kind must be 'points' or 'segment'")]


@pytest.mark.parametrize("part,kw,message", BAD, ids=[f"{p.__name__}-{next(iter(k))}" for p, k, _ in BAD])
def test_each_part_refuses_a_bad_value_with_one_line(part, kw, message):
    with pytest.raises(DeepLenseError) as e:
        part(**kw)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_parts_are_frozen_and_hashable():
    p = PRESETS["model_ii_physical"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.instrument.npix = 128
    assert hash(p) == hash(Preset.from_dict(p.to_dict()))


def _another(value):
    "A valid value different from `value`, for every kind of flat field."
    if value is None: return 10.
    if isinstance(value, bool): return not value
    if isinstance(value, tuple): return (value[0] - 0.5, value[1]) if value[0] < 0 else (value[0] / 2, value[1])
    if isinstance(value, int): return value + 1
    if isinstance(value, float): return value * 0.9 if value else 0.01
    return {"ccd": "none", "deeplensesim": "angular", "points": "segment", "generator": "counter"}[value]


@pytest.mark.parametrize("flat", list(FLAT_FIELDS))
def test_replace_routes_every_flat_name_to_its_part(flat):
    p = PRESETS["model_ii"]
    new = _another(p.value(flat))
    q = p.replace(**{flat: new})
    part, field = FLAT_FIELDS[flat]
    assert getattr(getattr(q, part), field) == new and q.value(flat) == new
    assert all(getattr(q, k) == getattr(p, k) for k in ("instrument", "observation", "cosmology", "lens", "source_galaxy",
                                                         "deeplense_subhalos", "axion") if k != part)
    assert get_preset("model_ii", **{flat: new}) == q
    assert Preset.from_dict(json.loads(json.dumps(q.to_dict()))) == q


def test_replace_takes_whole_parts_and_refuses_unknown_names():
    p = PRESETS["model_i"]
    q = p.replace(instrument=Instrument.from_band(EUCLID_VIS_2021, 64), noise="ccd")
    assert q.instrument == PRESETS["model_ii"].instrument and q.observation.noise == "ccd"
    with pytest.raises(DeepLenseError, match="unknown preset field"):
        p.replace(pixels=64)
    with pytest.raises(DeepLenseError, match="preset 'model_i': Instrument: npix"):
        p.replace(npix=2)
    with pytest.raises(DeepLenseError, match="needs the instrument's zero_point"):   # a check across parts
        p.replace(source_amp=None, source_magnitude=20.)


def test_old_flat_records_still_load():
    """A manifest or run record written by the flat preset: every key a flat name; lists where tuples were."""
    old = json.loads(json.dumps(RECORDS["to_dict"]["fsub_physical"]))
    p = Preset.from_dict(old)
    assert p == PRESETS["fsub_physical"] and p.subhalos == Subhalos() and p.observation.noise == "counts_once"
    with pytest.raises(DeepLenseError, match="unknown preset field"):
        Preset.from_dict({**old, "npixels": 64})


OLDER = [(dict(dmag=None), "Nuisance: dmag must lie in"), (dict(theta_E_frac="x"), "Nuisance: theta_E_frac must lie in"),
         (dict(source_R=(0.1, "a")), "Nuisance: source_R must be a (low, high) pair")]


@pytest.mark.parametrize("kw,message", OLDER)
def test_older_parts_refuse_bad_types_with_one_line(kw, message):
    from deeplense_fastai.simulate import Nuisance
    with pytest.raises(DeepLenseError) as e:
        Nuisance(**kw)
    assert message in str(e.value) and "\n" not in str(e.value)
    for part, bad, said in ((Knots, dict(n=("a", "b")), "Knots: n must be"), (Subhalos, dict(n_mean=None), "Subhalos: n_mean"),
                            (Subhalos, dict(tau="x"), "Subhalos: tau must be positive")):
        with pytest.raises(DeepLenseError, match=said):
            part(**bad)
    assert hash(Knots(n=[1, 3])) == hash(Knots(n=(1, 3))) and hash(Subhalos(n_mean=[0, 40])) == hash(Subhalos())  # lists: JSON's


def test_old_flat_names_say_where_they_live_now():
    p = PRESETS["model_ii"]
    with pytest.raises(AttributeError, match=r"preset.instrument.npix .*preset.replace\(npix=...\)"):
        p.npix
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        p.nothing
    with pytest.raises(DeepLenseError, match="the galaxy is source_galaxy=Source"):   # `source` is the provenance text
        get_preset("model_ii", source=Source(R=0.4))
    with pytest.raises(DeepLenseError, match="classes must be among"):
        Preset(classes=None)
