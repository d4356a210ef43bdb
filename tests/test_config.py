"""Every config group option composes; the model follows the dataset; every bad setting a user can write is
refused by composition or `validate` with one line naming the knob (the BAD table), in this process: the command
line prints exactly that line (tests/test_bad_inputs.py runs that path)."""

import contextlib
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from reptile_exp.config import register_schema
from reptile_exp.config_checks import check_given_paths, composition_error, validate
from reptile_exp.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = [
    "dataset",
    "model",
    "algorithm",
    "inner_optimizer",
    "outer_optimizer",
    "logger",
    "paths",
    "debug",
    "experiment",
]
COMPANIONS = {
    ("model", "omniglot_conv"): ["dataset=omniglot"],
    ("model", "miniimagenet_conv"): ["dataset=miniimagenet"],
}
register_schema()


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(*overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("train", overrides=list(overrides))


def _assert_sets(own, composed, where: str) -> None:
    """Every value an option file sets itself (its defaults list, interpolations and hydra keys aside) is in the
    composed config."""
    for key, value in own.items():
        if key in ("defaults", "hydra") or (isinstance(value, str) and "${" in value):
            continue
        if isinstance(value, dict):
            _assert_sets(value, composed[key], f"{where}{key}.")
        else:
            assert composed[key] == value, f"{where}{key}: the option sets {value!r}, the config has {composed[key]!r}"


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_resolves_and_applies(group, option):
    cfg = _compose(f"{group}={option}", *COMPANIONS.get((group, option), []))
    validate(cfg)
    path = CONF / group / f"{option}.yaml"
    own = OmegaConf.to_container(OmegaConf.load(path)) or {}
    composed = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    _assert_sets(own, composed if "@package _global_" in path.read_text() else composed[group], f"{group}={option}: ")


def test_outer_lr_is_epsilon():
    cfg = _compose("epsilon=0.37", "outer_optimizer=adam")
    assert cfg.outer_optimizer.lr == 0.37
    assert cfg.outer_optimizer._target_ == "torch.optim.Adam"


@contextlib.contextmanager
def _hydra_run(*overrides, config_dir=CONF):
    """The config of a run with these overrides, with HydraConfig set as in a real run (validate reads the
    chosen group options from it); the error line the command line would print is raised as ConfigError."""
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir)):
        try:
            cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
        except Exception as e:
            message = composition_error(e)
            if message is None:
                raise
            raise ConfigError(message) from e
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        yield cfg
    finally:
        HydraConfig.instance().cfg = None


def _error_line(*overrides) -> str:
    with pytest.raises(ConfigError) as info, _hydra_run(*overrides) as cfg:
        validate(cfg)
    return str(info.value)


DATASET_MODELS = {"sine": "mlp", "omniglot": "omniglot_conv", "miniimagenet": "miniimagenet_conv"}


@pytest.mark.parametrize("dataset,model", DATASET_MODELS.items())
def test_the_model_follows_the_dataset(dataset, model):
    assert set(DATASET_MODELS) == set(_options("dataset"))
    with _hydra_run(f"dataset={dataset}") as cfg:
        validate(cfg)
        following = OmegaConf.to_container(cfg.model)
    with _hydra_run(f"dataset={dataset}", f"model={model}") as cfg:
        assert following == OmegaConf.to_container(cfg.model)
    assert "for_dataset" not in _error_line("model=nope")  # the helper folder is no option of its own


OMNI, MINI = "dataset=omniglot", "dataset=miniimagenet"
# (overrides, the words the one line must hold): every knob of train.yaml and of the groups, set the way a user
# gets it wrong: zero, negative, wrong type, a string for a bool, an empty list, an unknown name, contradictions.
BAD = [
    # the model must take the dataset's inputs and give its outputs
    (
        (OMNI, "model=mlp"),
        "model=mlp does not fit dataset=omniglot: the model must take inputs of shape [1, 28, 28]; "
        "choose model=omniglot_conv",
    ),
    ((MINI, "model=mlp"), "model=mlp does not fit dataset=miniimagenet"),
    (
        ("model=omniglot_conv",),
        "model=omniglot_conv does not fit dataset=sine: the model must take inputs of shape [1]; choose model=mlp",
    ),
    (("model=miniimagenet_conv",), "model=miniimagenet_conv does not fit dataset=sine"),
    (
        (MINI, "model=omniglot_conv"),
        "model=omniglot_conv does not fit dataset=miniimagenet: the model must take inputs of shape [3, 84, 84]; "
        "choose model=miniimagenet_conv",
    ),
    ((OMNI, "model=miniimagenet_conv"), "model=miniimagenet_conv does not fit dataset=omniglot"),
    ((OMNI, "model.n_way=10"), "must give 5 outputs per example, not 10; undo model.n_way=10"),
    (
        (OMNI, "+model.in_channels=3"),
        "model=omniglot_conv does not fit dataset=omniglot: the model must take inputs "
        "of shape [1, 28, 28]; undo +model.in_channels=3",
    ),
    (("model.in_features=2",), "undo model.in_features=2"),
    (("model.out_features=3",), "the model must give 1 output per example, not 3"),
    # keys nobody knows, however they are given
    (("epsilon_fianl=0.1",), "epsilon_fianl is not a config key: did you mean 'epsilon_final'?"),
    (("+epsilon_fianl=0.1",), "epsilon_fianl is not a config key: did you mean 'epsilon_final'?"),
    (("++epsilon_fianl=0.1",), "epsilon_fianl is not a config key: did you mean 'epsilon_final'?"),
    (("+foo.bar=1",), "foo is not a config key"),
    (("kk=3",), "kk is not a config key: did you mean 'k'?"),
    ((OMNI, "+dataset.n_wya=5"), "dataset.n_wya is not a config key: did you mean 'n_way'?"),
    ((OMNI, "++dataset.n_wya=5"), "dataset.n_wya is not a config key: did you mean 'n_way'?"),
    (("dataset.n_pionts=3",), "dataset.n_pionts is not a config key: did you mean 'n_points'?"),
    (("+model.hiden=[8]",), "model.hiden is not a config key: did you mean 'hidden'?"),
    (("+algorithm.tail_shots=1",), "algorithm.tail_shots is not a config key"),
    (("+inner_optimizer.momentun=0.9",), "inner_optimizer.momentun is not a config key"),
    (("+outer_optimizer.momentun=0.9",), "outer_optimizer.momentun is not a config key: did you mean 'momentum'?"),
    (("outer_optimizer.momentum=0.9",), "write +outer_optimizer.momentum=... to pass it to torch.optim.SGD"),
    (("+logger.mdoe=offline",), "logger.mdoe is not a config key: did you mean 'mode'?"),
    (("++paths.dat_dir=/data",), "paths.dat_dir is not a config key: did you mean 'data_dir'?"),
    (("+k=3",), "An item is already at 'k'"),
    (
        ("+experiment=sine_joint",),
        "+experiment=sine_joint is invalid: experiment is already a config group here; write experiment=sine_joint",
    ),
    (("dataset=nope",), "dataset=nope is invalid: no such option"),
    (("experiment=nope",), "experiment=nope is invalid: no such option"),
    (("k=[1,",), "cannot compose the config"),
    (("name=${nope}",), "name cannot be resolved"),
    (("name=[a]",), "name=['a'] is invalid"),
    # top-level knobs: type, range
    (("seed=-1",), "seed=-1 is invalid: must be an integer in [0, "),
    (("seed=1.5",), "seed=1.5 is invalid"),
    (("device=gpu",), "device='gpu' is invalid"),
    (("dtype=float16",), "dtype='float16' is invalid"),
    (("k=0",), "k=0 is invalid: must be an integer >= 1"),
    (("k=-3",), "k=-3 is invalid"),
    (("k=abc",), "k='abc' is invalid"),
    (("k=2.5",), "k=2.5 is invalid"),
    (("k=",), "k='' is invalid"),
    (("inner_batch=0",), "inner_batch=0 is invalid"),
    (("inner_lr=0",), "inner_lr=0.0 is invalid: must be a finite number > 0"),
    (("inner_lr=-0.1",), "inner_lr=-0.1 is invalid"),
    (("inner_lr=nan",), "inner_lr=nan is invalid"),
    (("inner_lr=inf",), "inner_lr=inf is invalid"),
    # step sizes and epsilons the run's dtype cannot hold (1e39 overflowed in the inner step; 1e-50 left phi as it was)
    (
        ("inner_lr=1e39",),
        "inner_lr=1e+39 is invalid: it overflows to inf in dtype=float32, which holds 1.18e-38 to 3.4e+38; choose a "
        "value in that range, or dtype=float64",
    ),
    (("inner_lr=1e-50",), "inner_lr=1e-50 is invalid: it underflows (to 0 or a subnormal) in dtype=float32, which"),
    (("epsilon=1e-50",), "epsilon=1e-50 is invalid: it underflows (to 0 or a subnormal) in dtype=float32"),
    (("epsilon_final=1e-50",), "epsilon_final=1e-50 is invalid: it underflows (to 0 or a subnormal)"),
    (
        ("dtype=float64", "inner_lr=1e-320"),
        "inner_lr=1e-320 is invalid: it underflows (to 0 or a subnormal) in dtype=float64, which holds 2.23e-308 to "
        "1.8e+308; choose a value in that range",
    ),
    (("inner_optimizer=adam", "inner_optimizer.eps=1e39"), "inner_optimizer.eps=1e+39 is invalid: it overflows to inf"),
    (("inner_optimizer=adam", "inner_optimizer.eps=1e-50"), "inner_optimizer.eps=1e-50 is invalid: it underflows"),
    (("outer_optimizer=adam", "+outer_optimizer.eps=1e39"), "outer_optimizer.eps=1e+39 is invalid: it overflows"),
    (("replacement=maybe",), "replacement='maybe' is invalid"),
    (("replacement=${k}",), "replacement='${k}' is invalid: it resolves to 5; must be true or false"),  # read as true
    (("logger.log_model=${k}",), "logger.log_model='${k}' is invalid: it resolves to 5; must be true or false"),
    (("loss_reduction=avg",), "loss_reduction='avg' is invalid: Invalid value 'avg', expected one of [mean, sum]"),
    (("epsilon=0",), "epsilon=0.0 is invalid: must be a finite number > 0"),
    (("epsilon=fast",), "epsilon='fast' is invalid"),
    (("epsilon_final=-0.1",), "epsilon_final=-0.1 is invalid"),
    (("epsilon_final=0.5",), "epsilon_final=0.5 is invalid: must be between 0 and epsilon=0.1"),
    (("meta_batch=0",), "meta_batch=0 is invalid"),
    (("iterations=0",), "iterations=0 is invalid"),
    (("iterations=-5",), "iterations=-5 is invalid"),
    (("k_eval=-1",), "k_eval=-1 is invalid: must be an integer >= 0"),
    (("eval_batch=0",), "eval_batch=0 is invalid"),
    (("eval_tasks=0",), "eval_tasks=0 is invalid"),
    (("eval_splits=[]",), "eval_splits=[] is invalid: must list one or more of ['train', 'val', 'test']"),
    (("eval_splits=[dev]",), "eval_splits=['dev'] is invalid"),
    (("eval_splits=[test,test]",), "each once"),
    (("eval_splits=test",), "eval_splits='test' is invalid"),
    (("eval_splits=[train]",), "objective_split='test' is invalid: must be one of eval_splits=['train']"),
    (("objective_split=dev",), "objective_split='dev' is invalid: choose from ['train', 'val', 'test']"),
    (("objective_split=val",), "objective_split='val' is invalid: must be one of eval_splits=['test']"),
    (("eval_chunk=-1",), "eval_chunk=-1 is invalid"),
    (("eval_memory_mb=0",), "eval_memory_mb=0.0 is invalid"),
    (("transductive=maybe",), "transductive='maybe' is invalid"),
    (("eval_every=-1",), "eval_every=-1 is invalid"),
    (("eval_every_tasks=0",), "eval_every_tasks=0 is invalid"),
    (("synthetic_data=maybe",), "synthetic_data='maybe' is invalid"),
    (
        ("compile=jit",),
        "compile='jit' is invalid: Invalid value 'jit', expected one of [none, inductor, cudagraphs, auto]",
    ),
    (("precision=fp16",), "precision='fp16' is invalid"),
    (("fused_inner=maybe",), "fused_inner='maybe' is invalid"),
    (("grouped_tasks=maybe",), "grouped_tasks='maybe' is invalid"),
    (("task_conv=im2col",), "task_conv='im2col' is invalid"),
    (("threads=-1",), "threads=-1 is invalid"),
    (("keep_host_memory=maybe",), "keep_host_memory='maybe' is invalid"),
    (("deterministic=maybe",), "deterministic='maybe' is invalid"),
    (("log_every=0",), "log_every=0 is invalid"),
    (("checkpoint_every=0",), "checkpoint_every=0 is invalid"),
    (("keep_checkpoints=0",), "keep_checkpoints=0 is invalid"),
    (("overwrite=maybe",), "overwrite='maybe' is invalid"),
    (("evaluate_only=maybe",), "evaluate_only='maybe' is invalid"),
    (("progress=maybe",), "progress='maybe' is invalid"),
    # dataset group
    (("dataset.amplitude=[5,1]",), "dataset.amplitude=[5, 1] is invalid: must be a pair [low, high] with low <= high"),
    (("dataset.amplitude=[1]",), "dataset.amplitude=[1] is invalid"),
    (("dataset.phase=abc",), "dataset.phase='abc' is invalid"),
    (("dataset.x_range=[1,nan]",), "dataset.x_range=[1, nan] is invalid"),
    (("dataset.n_points=0",), "dataset.n_points=0 is invalid"),
    (("dataset.k_shot=0",), "dataset.k_shot=0 is invalid"),
    (("dataset.k_shot=abc",), "dataset.k_shot='abc' is invalid: must be an integer >= 1"),
    (("dataset.k_shot=60",), "dataset.k_shot=60 is invalid: must be <= dataset.n_points=50"),
    ((OMNI, "dataset.n_way=1"), "dataset.n_way=1 is invalid: must be an integer >= 2"),
    ((OMNI, "dataset.n_way=five"), "dataset.n_way='five' is invalid"),
    ((OMNI, "dataset.k_shot=-1"), "dataset.k_shot=-1 is invalid"),
    ((OMNI, "dataset.train_shots=0"), "dataset.train_shots=0 is invalid"),
    ((OMNI, "dataset.val_characters=-1"), "dataset.val_characters=-1 is invalid"),
    ((OMNI, "dataset.download=maybe"), "dataset.download='maybe' is invalid: must be true or false"),
    ((OMNI, "dataset.cache=maybe"), "dataset.cache='maybe' is invalid: must be true or false"),
    ((OMNI, "dataset.root=null"), "dataset.root=None is invalid: must be a string"),
    ((MINI, "dataset.n_way=0"), "dataset.n_way=0 is invalid"),
    # model group
    (("model.hidden=[64,0]",), "model.hidden=[64, 0] is invalid: must be an integer >= 1"),
    (("model.hidden=abc",), "model.hidden='abc' is invalid"),
    (("model.in_features=0",), "model.in_features=0 is invalid"),
    (("model.activation=5",), "model.activation=5 is invalid: must be a string"),
    ((OMNI, "+model.channels=0"), "model.channels=0 is invalid"),
    # algorithm group
    (("algorithm=maml", "algorithm.query_shots=0"), "algorithm.query_shots=0 is invalid"),
    (("algorithm=maml", "algorithm.query_shots=50"), "algorithm.query_shots=50 is invalid: must be < dataset.n_points"),
    (("algorithm=maml", "algorithm.first_order=maybe"), "algorithm.first_order='maybe' is invalid: must be true or"),
    (("algorithm=fomaml", "algorithm.tail_shots=-1"), "algorithm.tail_shots=-1 is invalid"),
    (("algorithm=nope",), "algorithm=nope is invalid: no such option"),
    # optimizers
    (("inner_optimizer=adam", "inner_optimizer.betas=[1.0,0.999]"), "inner_optimizer.betas=[1.0, 0.999] is invalid"),
    (("inner_optimizer=adam", "inner_optimizer.betas=[0.5]"), "inner_optimizer.betas=[0.5] is invalid: must be a pair"),
    (("inner_optimizer=adam", "inner_optimizer.eps=0"), "inner_optimizer.eps=0 is invalid"),
    (("inner_optimizer=adam", "inner_optimizer.reset=maybe"), "inner_optimizer.reset='maybe' is invalid"),
    (("inner_optimizer.lr=0",), "inner_optimizer.lr=0 is invalid"),
    (("outer_optimizer=adam", "outer_optimizer.betas=[0.9,1.5]"), "outer_optimizer.betas=[0.9, 1.5] is invalid"),
    (("outer_optimizer=adam", "outer_optimizer.betas=0.9"), "outer_optimizer.betas=0.9 is invalid: must be a pair"),
    (("+outer_optimizer.momentum=-1",), "outer_optimizer.momentum=-1 is invalid"),
    (("+outer_optimizer.nesterov=maybe",), "outer_optimizer.nesterov='maybe' is invalid: must be true or false"),
    # logger, paths
    (("logger.mode=nope",), "logger.mode='nope' is invalid: choose one of ['auto', 'online', 'offline', 'disabled']"),
    (("logger.log_model=maybe",), "logger.log_model='maybe' is invalid"),
    (("logger.tags=abc",), "logger.tags='abc' is invalid"),
    (("logger.project=null",), "logger.project=None is invalid"),
    (("paths.data_dir=[a]",), "paths.data_dir=['a'] is invalid"),
    (
        ("paths.log_dir=",),
        "paths.log_dir='' is invalid: an empty path names no folder: the paths built on it would start at the "
        "filesystem root (/runs, /omniglot); give a folder, or leave it out for its default",
    ),
    (("paths.cache_dir=' '",), "paths.cache_dir=' ' is invalid: an empty path names no folder"),
    (
        ("hydra.run.dir=",),
        "hydra.run.dir='' is invalid: an empty run dir is the current folder, where the run would write its files; "
        "give a folder, or leave it out for a new one under paths.log_dir",
    ),
    (("dataset.x_range=[-1e300,1e300]",), "dataset.x_range=[-1e+300, 1e+300] is invalid: must be a finite number in"),
    (("dataset.amplitude=[1e200,1e200]",), "dataset.amplitude=[1e+200, 1e+200] is invalid"),
    # the outer optimizer: ranges, and one step on a zero gradient before any data is read
    (("iterations=99999999999999999999",), "iterations=99999999999999999999 is invalid: must be an integer in [1, "),
    (("+outer_optimizer.momentum=1.5",), "outer_optimizer.momentum=1.5 is invalid: must be a finite number in [0, 1)"),
    (("+outer_optimizer.dampening=-5",), "outer_optimizer.dampening=-5 is invalid: must be a finite number in [0, 1]"),
    (("outer_optimizer=adam", "+outer_optimizer.maximize=true"), "outer_optimizer.maximize=True is invalid"),
    (("outer_optimizer=adam", "+outer_optimizer.capturable=true"), "outer_optimizer is invalid: If capturable=True"),
    (("outer_optimizer._target_=torch.optim.LBFGS",), "outer_optimizer is invalid: LBFGS.step() missing 1 required"),
    (("outer_optimizer._target_=torch.optim.SparseAdam",), "outer_optimizer is invalid: SparseAdam does not support"),
]


@pytest.mark.parametrize("overrides,words", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_a_bad_setting_fails_in_one_line_naming_it(overrides, words):
    line = _error_line(*overrides)
    assert "\n" not in line and words in line, line


# Valid uses of + and ++ and of Hydra's own keys: nothing refused.
GOOD = [
    ("++k=3",),
    (OMNI, "+model.channels=16"),
    ("+outer_optimizer.momentum=0.9", "+outer_optimizer.nesterov=true"),
    ("algorithm=maml", "++algorithm.first_order=true"),
    ("hydra.run.dir=/tmp/x", "hydra.job.chdir=false", "+hydra.job.env_set.FOO=1"),
    ("launcher=slurm", "+hydra.launcher.additional_parameters.mail-type=END"),
    (OMNI, "model=omniglot_conv", "dataset.n_way=20"),
    ("experiment=omniglot_5w1s", "model=omniglot_conv"),
    ("inner_lr=1e30",),  # finite: a run that diverges, and is reported so
    ("dtype=float64", "inner_lr=1e39", "outer_optimizer=adam", "+outer_optimizer.eps=1e-300"),
    ("inner_lr=1e-37", "epsilon_final=0"),
    ("replacement=${transductive}",),
]


@pytest.mark.parametrize("overrides", GOOD, ids=[" ".join(o) for o in GOOD])
def test_legitimate_additions_pass(overrides):
    with _hydra_run(*overrides) as cfg:
        validate(cfg)


def test_an_optional_local_config_is_read_and_checked(tmp_path):
    """conf/local/default.yaml is merged at the top level, with or without a package header; a typo in it
    gets the closest key and names the file."""
    conf = shutil.copytree(CONF, tmp_path / "conf")
    (conf / "local").mkdir()
    local = conf / "local" / "default.yaml"
    for header in ("", "# @package _global_\n"):
        local.write_text(f"{header}paths:\n  data_dir: /big/disk\nthreads: 1\n")
        with _hydra_run(config_dir=conf) as cfg:
            validate(cfg)
            assert (cfg.paths.data_dir, cfg.threads) == ("/big/disk", 1)
    for text, line in [
        (
            "paths:\n  dat_dir: /big/disk\n",
            "conf/local/default.yaml: paths.dat_dir is not a config key: did you mean 'data_dir'?",
        ),
        (
            "epsilon_fianl: 0.1\n",
            "conf/local/default.yaml: epsilon_fianl is not a config key: did you mean 'epsilon_final'?",
        ),
        ("k: abc\n", "conf/local/default.yaml: k='abc' is invalid: "),
    ]:
        local.write_text(text)
        with pytest.raises(ConfigError) as error:
            with _hydra_run(config_dir=conf):
                pass
        assert str(error.value).startswith(line)


@pytest.mark.parametrize(
    "mode,refused",
    [
        ("bogus", "WANDB_MODE='bogus' is invalid: unset it, or set online, offline"),
        ("", "WANDB_MODE='' is invalid: set but empty, which W&B refuses; unset it, or set online, offline or"),
        (" ", "WANDB_MODE=' ' is invalid: set but empty"),
        ("offline", None),
        ("dryrun", None),
    ],
)
@pytest.mark.parametrize("logger_mode", ["auto", "offline"])
def test_a_wandb_mode_from_the_environment_is_checked_with_the_config(monkeypatch, mode, refused, logger_mode):
    """WANDB_MODE=bogus failed only when W&B started, after the data was built, blaming logger.* values; so did
    WANDB_MODE= (set but empty), even with logger.mode=offline."""
    monkeypatch.setenv("WANDB_MODE", mode)
    cfg = _compose(f"logger.mode={logger_mode}")
    if refused:
        with pytest.raises(ConfigError) as error:
            validate(cfg)
        assert str(error.value).startswith(refused)
    else:
        validate(cfg)


def test_a_broken_local_config_is_named_in_one_line(tmp_path):
    """conf/local/default.yaml that is not YAML or not UTF-8 text: a yaml or UnicodeDecodeError traceback before."""
    conf = shutil.copytree(CONF, tmp_path / "conf")
    (conf / "local").mkdir()
    local = conf / "local" / "default.yaml"
    for data, line in [
        (b"threads: [1,\n", f"{local} is not valid YAML (expected the node content, but found '<stream end>', line 2,"),
        (b"threads: 1\n  k: 3\n", f"{local} is not valid YAML (mapping values are not allowed here, line 2, column"),
        (b"name: caf\xe9\n", f"{local} is not UTF-8 text (it holds the byte 0xe9); save it as UTF-8, or move it away"),
    ]:
        local.write_bytes(data)
        with pytest.raises(ConfigError) as error:
            with _hydra_run(config_dir=conf):
                pass
        assert str(error.value).startswith(line) and "\n" not in str(error.value), str(error.value)


@pytest.mark.parametrize("variable,key", [("REPTILE_EXP_OUTPUTS", "log_dir"), ("REPTILE_EXP_DATA", "data_dir")])
def test_an_empty_path_variable_is_named(monkeypatch, variable, key):
    """REPTILE_EXP_OUTPUTS= (set but empty) put the runs under /runs: refused naming the variable, by the entry point
    before Hydra makes the run dir (check_given_paths) and by validate; a paths.* override of it is left alone."""
    monkeypatch.setenv(variable, "")
    line = f"{variable}='' is invalid: it is set but empty, so paths.{key} is empty and the paths built on it"
    assert _error_line().startswith(line)
    with pytest.raises(ConfigError) as error:
        check_given_paths(["k=3"], {variable: ""})
    assert str(error.value).startswith(line)
    check_given_paths([f"paths.{key}=/big/disk"], {variable: ""})
    with _hydra_run(f"paths.{key}=/big/disk") as cfg:
        validate(cfg)


@pytest.mark.parametrize(
    "argv,line",
    [
        (["hydra.run.dir="], "hydra.run.dir='' is invalid: an empty run dir is the current folder"),
        (["-m", "hydra.sweep.dir=' '"], "hydra.sweep.dir=' ' is invalid: an empty sweep dir is the current folder"),
        (["-m", "paths.log_dir=a,''"], "paths.log_dir='' is invalid: an empty path names no folder"),
        (["++paths.data_dir="], "paths.data_dir='' is invalid: an empty path names no folder"),
        (["hydra.run.dir=/tmp/x", "k=[1,", "--config-dir", "/x", "~paths.log_dir"], None),
    ],
)
def test_empty_run_dirs_and_paths_on_the_command_line_are_refused_before_hydra(argv, line):
    if line is None:
        check_given_paths(argv, {})
        return
    with pytest.raises(ConfigError) as error:
        check_given_paths(argv, {})
    assert str(error.value).startswith(line)
