import json

import pytest

from semrec.config import load_settings, write_effective
from semrec.config.settings import PrepareDataSettings, TokenizeItemsSettings
from semrec.errors import ConfigError


def test_precedence_cli_over_env_over_toml(tmp_path, monkeypatch):
    cfg = tmp_path / "job.toml"
    cfg.write_text('sample = 100\nseed = 1\n[quantizer]\nlevels = 4\ncodebook_size = 64\nepochs = 7\n')
    monkeypatch.setenv("SEMREC_QUANTIZER__CODEBOOK_SIZE", "128")
    monkeypatch.setenv("SEMREC_SEED", "2")
    s = load_settings(TokenizeItemsSettings, ["--config", str(cfg), "--seed", "3"])
    assert s.quantizer.levels == 4  # toml
    assert s.quantizer.epochs == 7  # toml
    assert s.quantizer.codebook_size == 128  # env beats toml
    assert s.seed == 3  # CLI beats env
    assert s.quantizer.distance == "hybrid"  # default
    write_effective(s, tmp_path / "eff.json")
    assert json.loads((tmp_path / "eff.json").read_text())["quantizer"]["codebook_size"] == 128


@pytest.mark.parametrize("argv, field", [
    (["--sample", "100", "--quantizer.codebook_size", "70000"], "quantizer.codebook_size"),
    (["--sample", "100", "--quantizer.distance", "manhattan"], "quantizer.distance"),
    (["--sample", "100", "--quantizer.distance", "cosine,euclidean"], "levels=3"),
    (["--sample", "100", "--ray.cpus_per_actor", "0"], "ray.cpus_per_actor"),
    ([], "give exactly one input"),
    (["--sample", "100", "--items", "x"], "got items, sample"),
])
def test_validation_errors_name_the_field(argv, field):
    with pytest.raises(ConfigError) as e:
        load_settings(TokenizeItemsSettings, argv)
    assert field in str(e.value)


def test_bad_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(TokenizeItemsSettings, ["--config", str(tmp_path / "nope.toml")])
    bad = tmp_path / "bad.toml"
    bad.write_text("[quantizer\nlevels = ")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings(TokenizeItemsSettings, ["--config", str(bad)])
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("sample = 10\n[quantizer]\nlevelz = 2\n")
    with pytest.raises(ConfigError, match="quantizer.levelz"):
        load_settings(TokenizeItemsSettings, ["--config", str(unknown)])


def test_build_maps_settings_to_quantizers():
    s = load_settings(TokenizeItemsSettings, ["--sample", "10", "--quantizer.distance", "cosine,cosine,euclidean"])
    q = s.quantizer.build(seed=5)
    assert q.kind == "rqvae" and q.distance_names == ["cosine", "cosine", "euclidean"] and q.params["seed"] == 5
    s = load_settings(TokenizeItemsSettings, ["--sample", "10", "--quantizer.kind", "pcakmeans",
                                              "--quantizer.positions", "3"])
    assert s.quantizer.build(0).params["positions"] == 3


def test_prepare_data_requires_format_and_output():
    with pytest.raises(ConfigError, match="format"):
        load_settings(PrepareDataSettings, ["--output", "x"])


# ----------------------------------------------------------------------------- settings are honoured or refused
def test_rkmeans_honours_an_explicit_hybrid_distance_and_defaults_to_euclidean():
    q = load_settings(TokenizeItemsSettings, ["--sample", "10", "--quantizer.kind", "rkmeans",
                                              "--quantizer.distance", "hybrid"]).quantizer.build(0)
    assert q.kind == "rkmeans" and q.distance_names == ["cosine", "cosine", "euclidean"]
    s = load_settings(TokenizeItemsSettings, ["--sample", "10", "--quantizer.kind", "rkmeans"])
    assert s.quantizer.build(0).distance_names == ["euclidean"] * 3
    assert s.quantizer.epochs is None  # rqvae-only settings stay unset (and so in effective_config.json)


@pytest.mark.parametrize("argv, field", [
    (["--quantizer.kind", "pcakmeans", "--quantizer.levels", "4"], "quantizer.levels does not apply to kind=pcakmeans"),
    (["--quantizer.kind", "pcakmeans", "--quantizer.distance", "cosine"], "quantizer.distance does not apply"),
    (["--quantizer.kind", "rkmeans", "--quantizer.epochs", "5"], "quantizer.epochs does not apply to kind=rkmeans"),
    (["--quantizer.positions", "2"], "quantizer.positions does not apply to kind=rqvae"),
])
def test_settings_that_do_not_apply_are_errors_naming_them(argv, field):
    with pytest.raises(ConfigError, match=field):
        load_settings(TokenizeItemsSettings, ["--sample", "10", *argv])


def test_semrec_config_env_is_honoured_and_config_inside_toml_is_refused(tmp_path, monkeypatch):
    cfg = tmp_path / "job.toml"
    cfg.write_text("sample = 100\n[quantizer]\nlevels = 5\n")
    monkeypatch.setenv("SEMREC_CONFIG", str(cfg))
    s = load_settings(TokenizeItemsSettings, [])
    assert s.sample == 100 and s.quantizer.levels == 5
    assert load_settings(TokenizeItemsSettings, ["--quantizer.levels", "2"]).quantizer.levels == 2  # CLI wins
    monkeypatch.setenv("SEMREC_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="missing.toml .from SEMREC_CONFIG"):
        load_settings(TokenizeItemsSettings, [])
    nested = tmp_path / "nested.toml"
    nested.write_text(f'config = "{cfg}"\nsample = 10\n')
    monkeypatch.delenv("SEMREC_CONFIG")
    with pytest.raises(ConfigError, match="'config' cannot be set inside a config file"):
        load_settings(TokenizeItemsSettings, ["--config", str(nested)])
