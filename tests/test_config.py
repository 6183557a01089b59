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
