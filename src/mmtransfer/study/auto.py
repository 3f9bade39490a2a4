"""``mmtransfer study --auto CONFIG``: a study of the fine-tuning strategies that apply to a config's model, on
its own label budget, scored on the validation split, and the strategy it recommends."""

from __future__ import annotations

import copy
from pathlib import Path

from pydantic import ValidationError

from mmtransfer.config import ConfigError, read_config_file, validate
from mmtransfer.study.plan import LOWER_BETTER, Budget, StudyConfig, budget_name, error_lines
from mmtransfer.study.stats import paired_interval

AUTO_STRATEGIES = (
    "linear_probe", "lp_ft", "full", "freeze_then_unfreeze", "gradual_unfreeze", "discriminative", "lora"
)  # fmt: skip


def auto_study(config: str | Path, seeds: int = 3) -> tuple[StudyConfig, dict, Path]:
    """A study of the strategies that apply to ``config``'s model, on its own label budget."""
    path = Path(config)
    raw = read_config_file(path)
    cfg = validate(copy.deepcopy(raw), str(path))
    hf = any(getattr(e, "type", None) == "hf" for e in cfg.model.encoders.values())  # lora needs a transformer
    from mmtransfer.transfer.strategies import pretrained  # imports torch (seconds): only once the config is valid

    # LP-FT starts from pretrained features: a configured pretrained encoder, or the preset's for a table's photos
    # and texts (their encoders are chosen when the columns are bound)
    table = cfg.data.table is not None or cfg.data.folder is not None
    warm = bool(pretrained(cfg.model.encoders)) or (cfg.model.preset == "auto" and table)
    wanted = {"lora": hf, "lp_ft": warm}
    arms = {name: {"train.strategy.name": name} for name in AUTO_STRATEGIES if wanted.get(name, True)}
    budget: Budget = cfg.data.k_per_class or cfg.data.label_fraction or "all"
    try:
        study = StudyConfig(base=raw, budgets=[budget], seeds=seeds, arms=arms, reference="full", ablation=False)
    except ValidationError as err:  # --seeds beyond the bound
        lines = error_lines(err)
        raise ConfigError(f"{path}: --auto with --seeds {seeds}:\n" + "\n".join(lines)) from None
    return study, raw, path.parent.resolve()


def recommend(results: dict, study: StudyConfig) -> dict | None:
    """The arm with the best mean validation metric, its interval, its cost, and its paired margin over the
    runner-up; None when no arm finished."""
    section = results["summary"][budget_name(study.budgets[0])]
    if not section:
        return None
    metric = study.metric
    ranked = sorted(section, key=lambda a: section[a][metric]["mean"], reverse=metric not in LOWER_BETTER)
    best = ranked[0]
    out = {"arm": best, "overrides": study.arms[best], metric: section[best][metric],
           "seconds": section[best]["seconds"]["mean"], "ranking": ranked}  # fmt: skip
    if len(ranked) > 1:
        a = {r["seed"]: r["test"][metric] for r in results["cells"] if r["arm"] == best}
        b = {r["seed"]: r["test"][metric] for r in results["cells"] if r["arm"] == ranked[1]}
        seeds = sorted(set(a) & set(b))
        out["runner_up"] = ranked[1]
        out["margin"] = paired_interval([a[s] for s in seeds], [b[s] for s in seeds], study.confidence)
    return out
