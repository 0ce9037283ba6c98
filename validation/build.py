"""Build a real training setup from a ``validation.records.Scenario`` (device-agnostic).

Shared by the trace backend (``validation/trace.py``: fake tensors on a fake CUDA device, or
fake/real CPU) and the CUDA backend (real GPU). Nothing here downloads anything: every model is
built from a config with random weights (``AutoModelForCausalLM.from_config``).

API (all imports of torch/transformers/peft are lazy, inside the functions):

``model_config(request) -> transformers.PretrainedConfig``
    The HF config of ``request.model``: an inline ``config.json`` dict (needs ``model_type``) or
    a catalog name (the catalog row's ``config``) or a path to a ``config.json``, built with
    ``AutoConfig.for_model(model_type, **fields)``.

``build_model(scenario, device=None, *, on_meta=False, attn_implementation=None) -> nn.Module``
    The model as a Trainer run would hold it: storage dtype ``request.dtype``, the attention
    implementation ``request.attn`` (or the override), PEFT LoRA wrapped with ``get_peft_model``
    (adapters kept fp32 over a 16-bit base, PEFT's default), gradient checkpointing enabled the
    way ``Trainer`` does (``activation_checkpointing_enable()`` / ``gradient_checkpointing_enable``
    with transformers' default ``use_reentrant``), ``train()`` mode. With ``on_meta=True`` it is
    built on the meta device (no memory) and must be materialised with ``materialize``.

``materialize(model, device) -> nn.Module``
    ``to_empty(device=...)`` then re-tie the tied weights (``to_empty`` unties them).

``build_optimizer(scenario, model) -> torch.optim.Optimizer``
    The optimizer class and kwargs from ``transformers.Trainer.get_optimizer_cls_and_kwargs``,
    the Trainer's decay/no-decay parameter groups over the trainable parameters, and the torch
    implementation pinned by ``scenario.optim_impl`` (``default`` = what a CUDA run picks:
    foreach for torch optimizers, fused when the optim name says ``fused``).

``build_setup(scenario, device, *, model=None) -> Setup``
    Model (built unless given), optimizer, ``GradScaler`` (fp16 AMP only), a batch factory and
    ``Setup.step(batch)``: forward (under autocast, outputs converted to fp32 as accelerate does
    for the Trainer) -> loss -> backward -> optimizer step -> ``zero_grad(set_to_none=True)``.
    ``Setup.on_phase`` (a callable taking the phase name) is called when each phase starts:
    ``forward``, ``loss`` (when the model's loss function is entered), ``backward``,
    ``optimizer``; a tracker uses it to label its records.

QLoRA (bitsandbytes 4-bit) is built only when ``bitsandbytes`` can quantize on ``device``;
``build_model`` raises ``Unsupported`` otherwise.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch  # noqa: TID251

    from validation.records import Scenario
    from vramcalc.specs import EstimateRequest

__all__ = [
    "Setup",
    "Unsupported",
    "bnb_config",
    "build_model",
    "build_optimizer",
    "build_setup",
    "materialize",
    "model_config",
    "quantize_base",
    "request_attn",
    "torch_dtype",
]

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class Unsupported(RuntimeError):
    """The scenario cannot be built on this device/stack (the message says why)."""


def request_attn(req: EstimateRequest) -> str:
    """Return the ``attn_implementation`` of ``req``: as asked, else the model's default.

    Source: ``vramcalc.kernels.default_attention`` (the per-class default transformers 5.24
    picks, from ``data/architectures.json``).
    """
    if req.attn is not None:
        return str(req.attn.value)
    from vramcalc.hf import resolve_model
    from vramcalc.kernels import default_attention

    return default_attention(resolve_model(req.model).model_type).value


def torch_dtype(name: str) -> torch.dtype:
    """``fp32``/``bf16``/``fp16`` -> the torch dtype."""
    import torch  # noqa: TID251

    return getattr(torch, _DTYPES[str(name)])  # type: ignore[no-any-return]


def _config_fields(model: str | dict[str, Any]) -> dict[str, Any]:
    """Config fields of an inline dict, a catalog model (its row's ``config``) or a path."""
    if isinstance(model, dict):
        return dict(model)
    from vramcalc.catalog import model_row
    from vramcalc.errors import UnknownNameError

    try:
        return dict(model_row(model)["config"])
    except UnknownNameError:
        path = Path(model).expanduser()
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise
        fields: dict[str, Any] = json.loads(path.read_text("utf-8"))
        return fields


def model_config(request: EstimateRequest) -> Any:
    """Return the transformers config of ``request.model`` (inline dict or catalog name)."""
    from transformers import AutoConfig

    fields = _config_fields(request.model)
    model_type = fields.pop("model_type", None)
    if not model_type:
        raise Unsupported(f"model config needs a 'model_type', got keys {sorted(fields)}")
    for key in ("architectures", "transformers_version", "torch_dtype", "dtype", "_name_or_path"):
        fields.pop(key, None)
    return AutoConfig.for_model(model_type, **fields)


def _lora_config(request: EstimateRequest, model_type: str, task: str | None = "CAUSAL_LM") -> Any:
    from peft import LoraConfig

    opts = request.lora or request.qlora
    assert opts is not None
    kwargs: dict[str, Any] = {"r": opts.r, "lora_dropout": opts.dropout}
    if task is not None:  # PEFT has no masked-LM task type: a plain PeftModel wraps those
        kwargs["task_type"] = task
    if opts.alpha is not None:
        kwargs["lora_alpha"] = opts.alpha
    if opts.targets is not None:
        targets = list(opts.targets)
        all_linear = [t.lower().replace("_", "-") for t in targets] == ["all-linear"]
        # PEFT takes the all-linear shorthand as a string only (a list entry names a module)
        kwargs["target_modules"] = "all-linear" if all_linear else targets
        if request.freeze_vision and not all_linear:
            # --freeze-vision: adapters in the language model only (a regex over its path)
            names = "|".join(t.replace(".", r"\.") for t in targets)
            kwargs["target_modules"] = rf".*language_model\..*({names})"
    if model_type == "gpt2":  # Conv1D weights are stored (in, out); PEFT asks for this flag
        kwargs["fan_in_fan_out"] = True
    return LoraConfig(**kwargs)


def build_model(
    scenario: Scenario,
    device: str | torch.device | None = None,
    *,
    on_meta: bool = False,
    attn_implementation: str | None = None,
) -> Any:
    """Build the model of a scenario as a Trainer run holds it (see the module docstring)."""
    import torch  # noqa: TID251

    from vramcalc.hf import untie_forced_heads

    req = scenario.request
    quantized = req.qlora is not None or req.quant is not None
    if quantized and (
        req.lora is not None or str(req.quant.value if req.quant else "nf4") not in ("nf4", "fp4")
    ):
        raise Unsupported("validation.build quantizes 4-bit QLoRA bases only (nf4/fp4)")
    if quantized and not on_meta:
        raise Unsupported(
            "QLoRA bases are built on meta and quantized by quantize_base() after "
            "materialize(); pass on_meta=True"
        )
    if req.adapter or req.prefix or req.prompt_tuning or req.ia3:
        raise Unsupported("only full fine-tuning and LoRA are built by validation.build")
    cfg = model_config(req)
    attn = attn_implementation or request_attn(req)
    dtype = torch_dtype(req.dtype.value)
    target = torch.device("meta") if on_meta else (torch.device(device) if device else None)
    ctx = target if target is not None else contextlib.nullcontext()
    model_cls = _model_class(cfg, _config_fields(req.model).get("architectures"))
    if attn == "sdpa" and not getattr(model_cls, "_supports_sdpa", True):
        # attention-free models (Mamba) refuse an explicit "sdpa"; with none given,
        # transformers picks its default (eager) as a user's from_pretrained would
        attn = None
    with ctx:
        model = model_cls._from_config(cfg, dtype=dtype, attn_implementation=attn)
    # T5Config/MT5Config force a tied head; checkpoints saved untied (T5 v1.1, mT5, T0) load
    # untied, and so are built here (vramcalc.hf.untie_forced_heads, re-applied by materialize)
    model._vramcalc_config = _config_fields(req.model)
    untie_forced_heads(model, model._vramcalc_config)
    if quantized:
        from transformers.integrations.bitsandbytes import replace_with_bnb_linear
        from transformers.quantizers.base import get_keys_to_not_convert

        model = replace_with_bnb_linear(
            model,
            modules_to_not_convert=get_keys_to_not_convert(model),
            quantization_config=bnb_config(req),
        )
    if req.freeze_vision:
        # the vision tower's weights (not the projector) stop training, as a VLM recipe's
        # freeze loop does (LLaVA's vision_tower, Qwen-VL's visual blocks)
        inner = getattr(model, "model", model)
        tower = (
            getattr(inner, "vision_tower", None)
            or getattr(inner, "visual", None)
            or getattr(inner, "vision_model", None)  # Llama-3.2-Vision
        )
        if tower is None:
            raise Unsupported("--freeze-vision: the model has no vision tower")
        merger = getattr(tower, "merger", None)
        kept = {id(p) for p in merger.parameters()} if merger is not None else set()
        for name, param in tower.named_parameters():
            if id(param) not in kept and "deepstack_merger" not in name:
                param.requires_grad_(False)
    if req.lora is not None or req.qlora is not None:
        from peft import get_peft_model

        name = model_cls.__name__
        task = (
            "SEQ_CLS" if "SequenceClassification" in name
            else None if name.endswith("ForMaskedLM") else "CAUSAL_LM"
        )  # fmt: skip
        model = get_peft_model(model, _lora_config(req, cfg.model_type, task))
    if req.grad_ckpt:
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is None:
            enable = model.gradient_checkpointing_enable
        enable()
    model.train()
    return model


def _model_class(cfg: Any, architectures: Any = None) -> Any:
    """Return the class a fine-tuning script builds for ``cfg``.

    The config's ``architectures[0]`` when transformers has that class for this config type
    (``BertForSequenceClassification``: what ``validation/cuda.py`` builds for the real run,
    and what the engine estimates); else the causal or seq2seq LM class.
    """
    import transformers
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoModelForSeq2SeqLM,
    )

    if isinstance(architectures, list) and architectures:
        named = getattr(transformers, str(architectures[0]), None)
        if named is not None and getattr(named, "config_class", None) is type(cfg):
            return named
    for auto in (AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForImageTextToText):
        mapping = auto._model_mapping
        if type(cfg) in mapping:
            return mapping[type(cfg)]
    raise Unsupported(f"transformers has no causal or seq2seq LM class for {cfg.model_type!r}")


def _base_model(model: Any) -> Any:
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def bnb_config(request: EstimateRequest) -> Any:
    """Return the ``BitsAndBytesConfig`` of a QLoRA request (PEFT's FSDP+QLoRA recipe).

    4-bit ``request.quant`` (nf4 default) with double quantization, the compute dtype of the
    forward (the AMP dtype, else the storage dtype); under FSDP ``bnb_4bit_quant_storage`` is
    that dtype as well, so FSDP can flatten and shard the packed weights with the other
    parameters (PEFT ``docs/source/accelerate/fsdp.md``, Answer.AI ``fsdp_qlora``); otherwise
    uint8 (the default).
    """
    import torch  # noqa: TID251
    from transformers import BitsAndBytesConfig

    mp = str(request.mixed_precision.value)
    compute = torch_dtype(mp if mp != "no" else request.dtype.value)
    storage = compute if request.fsdp is not None else torch.uint8
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=str(request.quant.value) if request.quant else "nf4",
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_quant_storage=storage,
    )


def quantize_base(model: Any, request: EstimateRequest) -> list[Any]:
    """Quantize every bitsandbytes ``Linear4bit`` of a materialised model in place.

    Each (uninitialised) 16-bit weight is quantized with ``bitsandbytes.functional.
    quantize_4bit`` -- the op ``Params4bit._quantize`` calls when transformers loads a
    4-bit model -- and replaced by the packed storage with its ``QuantState``. On fake
    tensors ``Params4bit`` cannot wrap the data (a fake tensor is already a tensor subclass):
    the packed weight is a plain frozen ``Parameter`` carrying ``quant_state``, which is
    what ``Linear4bit.forward`` reads (``fix_4bit_weight_quant_state_from_module`` restores
    it on the parameters FSDP re-creates). Returns the quant-state tensors (absmax, nested
    absmax, codes, offset), device storage that is not a parameter or buffer.
    """
    import bitsandbytes as bnb
    import torch  # noqa: TID251
    from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily  # noqa: TID251

    cfg = bnb_config(request)
    state: list[Any] = []
    qmaps = bnb.functional.name2qmap
    if "dynamic" not in qmaps:
        # the nested quantization's 8-bit code is built with host-side Python (``tolist``),
        # which fake tensors cannot run: build it for real, then move it like the library
        with unset_fake_temporarily():
            code = bnb.functional.create_dynamic_map()
        device = next(m.weight.device for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
        qmaps["dynamic"] = code.to(device)
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        weight = module.weight
        data = (
            weight.data
            if weight.dtype == cfg.bnb_4bit_compute_dtype
            else weight.data.to(cfg.bnb_4bit_compute_dtype)
        )
        packed, qs = bnb.functional.quantize_4bit(
            data,
            blocksize=64,
            compress_statistics=cfg.bnb_4bit_use_double_quant,
            quant_type=cfg.bnb_4bit_quant_type,
            quant_storage=cfg.bnb_4bit_quant_storage,
        )
        del data, weight
        if isinstance(packed, FakeTensor):
            param = torch.nn.Parameter(packed, requires_grad=False)
            param.quant_state = qs  # type: ignore[attr-defined]
        else:
            param = bnb.nn.Params4bit(
                packed, requires_grad=False, quant_state=qs, blocksize=64,
                compress_statistics=cfg.bnb_4bit_use_double_quant,
                quant_type=cfg.bnb_4bit_quant_type, quant_storage=cfg.bnb_4bit_quant_storage,
                module=module, bnb_quantized=True,
            )  # fmt: skip
        module.weight = param
        module.quant_state = qs
        module.quant_storage = cfg.bnb_4bit_quant_storage
        state += [qs.absmax, qs.code, qs.offset]
        if qs.state2 is not None:
            state += [qs.state2.absmax, qs.state2.code]
    return [t for t in state if isinstance(t, torch.Tensor)]


def materialize(model: Any, device: str | torch.device) -> Any:
    """Allocate a meta-built model on ``device`` (uninitialised) and re-tie its weights."""
    from vramcalc.hf import untie_forced_heads

    model.to_empty(device=device)
    base = _base_model(model)
    tie = getattr(base, "tie_weights", None)
    if callable(tie):
        tie()
    untie_forced_heads(base, getattr(base, "_vramcalc_config", {}))
    return model


def build_optimizer(scenario: Scenario, model: Any) -> Any:
    """Create the optimizer a ``Trainer`` would create, with the pinned torch implementation."""
    import torch  # noqa: TID251
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir="/tmp/vramcalc-validation", optim=scenario.request.optim, report_to=[]
    )
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    kwargs = dict(kwargs)
    if (
        isinstance(cls, type)
        and issubclass(cls, torch.optim.Optimizer)
        and (cls.__module__.startswith("torch.optim"))
    ):
        impl = scenario.optim_impl
        if impl == "default":
            impl = "fused" if kwargs.get("fused") else "foreach"
        kwargs.pop("fused", None)
        kwargs.pop("foreach", None)
        if impl == "fused":
            kwargs["fused"] = True
        else:
            kwargs["foreach"] = impl == "foreach"
    decay = set(Trainer.get_decay_parameter_names(None, model))  # type: ignore[arg-type]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if n in decay], "weight_decay": args.weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]
    return cls([g for g in groups if g["params"]], **kwargs)


def _to_fp32(obj: Any) -> Any:
    """Convert outputs as accelerate's ``convert_outputs_to_fp32`` does under AMP."""
    try:
        from accelerate.utils import convert_to_fp32
    except ImportError:  # pragma: no cover - accelerate is a dependency of the extra
        return obj
    return convert_to_fp32(obj)


@dataclass
class Setup:
    """A ready-to-run training step; see the module docstring."""

    scenario: Scenario
    device: Any
    model: Any
    optimizer: Any
    scaler: Any
    autocast_dtype: Any
    vocab_size: int
    num_labels: int = 0  # > 0: a sequence-classification head (labels are class ids)
    on_phase: Callable[[str], None] = field(default=lambda _phase: None)
    encoder_decoder: bool = False
    images: ImageBatch | None = None
    no_sync: Callable[[], Any] | None = None
    """A context in which backward does not reduce gradients: accelerate's
    ``Accelerator.no_sync`` (FSDP1 ``model.no_sync()``, FSDP2
    ``set_requires_gradient_sync(False)``), entered by ``Accelerator.accumulate`` for every
    micro-batch but the last of an optimizer step (unless ``sync_each_batch``). None: every
    micro-batch syncs (one process, DDP's no_sync changes no memory)."""

    def make_batch(self) -> dict[str, Any]:
        """Make an unpadded batch (no attention mask, as an unpadded Trainer batch).

        Causal LM: ``labels`` are the inputs. Encoder-decoder: ``labels`` of ``target_len``
        (default ``seq_len``) tokens, which the model shifts right into its decoder inputs.
        """
        import torch  # noqa: TID251

        req = self.scenario.request
        if self.images is not None:
            return self.images.make(req.batch_size, req.seq_len, self.device)
        ids = torch.randint(0, self.vocab_size, (req.batch_size, req.seq_len), device=self.device)
        if self.num_labels:  # a sequence-classification head: one class label per row
            cls = torch.randint(0, self.num_labels, (req.batch_size,), device=self.device)
            return {"input_ids": ids, "labels": cls}
        if self.encoder_decoder:
            tgt = req.target_len or req.seq_len
            labels = torch.randint(0, self.vocab_size, (req.batch_size, tgt), device=self.device)
            return {"input_ids": ids, "labels": labels}
        return {"input_ids": ids, "labels": ids.clone()}

    def _autocast(self) -> Any:
        import torch  # noqa: TID251

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=self.autocast_dtype)

    def step(self, batch: dict[str, Any]) -> None:
        """Forward -> loss -> backward -> optimizer.step -> zero_grad(set_to_none=True)."""
        self.micro_step(batch, 1, sync=True)
        self.optimizer_step()

    def micro_step(self, batch: dict[str, Any], grad_accum: int, *, sync: bool) -> None:
        """One micro-batch: forward -> loss / ``grad_accum`` -> backward (gradients accumulate).

        As ``Trainer.training_step`` runs it inside ``Accelerator.accumulate``: the forward
        and backward of a micro-batch that does not end the optimizer step run under
        ``no_sync`` (when set).
        """
        ctx = contextlib.nullcontext()
        if self.no_sync is not None and not sync:
            ctx = self.no_sync()
        with ctx:
            self.on_phase("forward")
            with self._autocast():
                out = self.model(**batch)
            if self.autocast_dtype is not None:
                out = _to_fp32(out)
            loss = out["loss"] if isinstance(out, dict) else out.loss
            del out
            if grad_accum > 1:
                loss = loss / grad_accum
            self.on_phase("backward")
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
            del loss

    def optimizer_step(self) -> None:
        """optimizer.step (through the grad scaler under fp16) -> zero_grad(set_to_none=True)."""
        self.on_phase("optimizer")
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


@dataclass
class ImageBatch:
    """How a vision-language model's processor lays out ``images`` images per row.

    Each row is ``seq_len`` text tokens plus ``images * tokens`` image placeholder tokens
    (the processor expands one placeholder per LM token), with the model's pixel inputs:
    Qwen-VL ``pixel_values`` (all patches of the batch, ``C * temporal * patch**2`` values
    each) and ``image_grid_thw``; LLaVA / Gemma 3 ``(images, C, size, size)`` pixels, and
    Gemma 3's ``token_type_ids`` (1 on image tokens: its processor returns them, and with them
    the model builds its bidirectional image-block mask) and Qwen3-VL's ``mm_token_type_ids``
    (which its forward requires with ``image_grid_thw``). Labels are -100 on image tokens,
    as the collators mask them.

    Source: transformers v5.24 ``processing_qwen2_5_vl.py``, ``image_processing_qwen2_vl.py``
    (``smart_resize``), ``processing_llava.py``, ``processing_gemma3.py``.
    """

    images: int
    tokens: int
    image_token_id: int
    vocab_size: int
    pixel_shape: tuple[int, ...]
    grid: tuple[int, int, int] | None = None
    start_id: int | None = None
    end_id: int | None = None
    token_types: bool = False
    mm_token_types: bool = False
    tiles: int = 0
    """Llama-3.2-Vision: tiles per image (padded); pixels are (B, images, tiles, C, s, s)."""
    used_tiles: int = 0
    aspect_id: int = 0

    def make(self, batch: int, seq_len: int, device: Any) -> dict[str, Any]:
        import torch  # noqa: TID251

        reserved = {self.image_token_id, self.start_id, self.end_id} - {None}
        top = min(reserved) if reserved else self.vocab_size
        length = seq_len + self.images * self.tokens
        ids = torch.randint(0, top, (batch, length), device=device)
        is_image = torch.zeros(batch, length, dtype=torch.bool, device=device)
        pos = 0
        for _ in range(self.images):
            if self.start_id is not None:  # <|vision_start|> before the image's tokens
                ids[:, pos] = self.start_id
                pos += 1
            is_image[:, pos : pos + self.tokens] = True
            pos += self.tokens
            if self.end_id is not None:
                ids[:, pos] = self.end_id
                pos += 1
        ids[is_image] = self.image_token_id
        labels = ids.masked_fill(is_image, -100)
        n = batch * self.images
        shape = (n * self.pixel_shape[0], *self.pixel_shape[1:]) if self.grid else (
            n, *self.pixel_shape
        )
        if self.tiles:
            return self._tiled(ids, labels, batch, length, device)
        out: dict[str, Any] = {
            "input_ids": ids,
            "labels": labels,
            "pixel_values": torch.randn(shape, device=device),
        }
        if self.grid is not None:
            out["image_grid_thw"] = torch.tensor([self.grid] * n, device=device)
        if self.token_types:
            out["token_type_ids"] = is_image.long()
        if self.mm_token_types:  # Qwen3-VL's processor: 1 on image tokens (2 on video)
            out["mm_token_type_ids"] = is_image.long()
        return out


    def _tiled(self, ids: Any, labels: Any, batch: int, length: int, device: Any) -> dict[str, Any]:
        """Llama-3.2-Vision's batch: the image tokens open the row (one per image).

        ``aspect_ratio_ids`` (1 + the canvas's index among the supported tile grids),
        ``aspect_ratio_mask`` (1 on the used tiles) and ``cross_attention_mask`` as
        ``processing_mllama.py`` builds them: consecutive image tokens each attend from their
        own position to the end of the row (``get_cross_attention_token_mask``), over the
        image's used tiles (``convert_sparse_cross_attention_mask_to_dense``).
        """
        import torch  # noqa: TID251

        k, t, u = self.images, self.tiles, self.used_tiles
        pixels = torch.zeros(batch, k, t, *self.pixel_shape, device=device)
        pixels[:, :, :u] = torch.randn(batch, k, u, *self.pixel_shape, device=device)
        ratio_mask = torch.zeros(batch, k, t, dtype=torch.long, device=device)
        ratio_mask[:, :, :u] = 1
        cross = torch.zeros(batch, length, k, t, dtype=torch.long, device=device)
        for i in range(k):
            cross[:, i:, i, :u] = 1
        return {
            "input_ids": ids,
            "labels": labels,
            "pixel_values": pixels,
            "aspect_ratio_ids": torch.full((batch, k), self.aspect_id, device=device),
            "aspect_ratio_mask": ratio_mask,
            "cross_attention_mask": cross,
        }


def image_batch(request: EstimateRequest, config: Any) -> ImageBatch | None:
    """Return the ``ImageBatch`` of a vision-language request (None: text model, no image)."""
    if getattr(config, "vision_config", None) is None or not request.images:
        return None
    from vramcalc.checks import parse_image_size

    text = config.get_text_config()
    vis = config.vision_config
    vocab = int(text.vocab_size)
    if config.model_type in ("qwen2_5_vl", "qwen3_vl"):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        # the processor defaults: Qwen2.5-VL min_pixels 56*56, max_pixels 28*28*1280;
        # Qwen3-VL preprocessor_config.json size shortest_edge 65536, longest_edge 16777216
        lo, hi = (3136, 1003520) if config.model_type == "qwen2_5_vl" else (65536, 16777216)
        h, w = parse_image_size(request.image_size) if request.image_size else (448, 448)
        merge = int(vis.spatial_merge_size)
        patch = int(vis.patch_size)
        rh, rw = smart_resize(h, w, factor=patch * merge, min_pixels=lo, max_pixels=hi)
        gh, gw = rh // patch, rw // patch
        per = int(vis.in_channels) * int(vis.temporal_patch_size) * patch * patch
        return ImageBatch(
            images=request.images, tokens=gh * gw // (merge * merge),
            image_token_id=int(config.image_token_id), vocab_size=vocab,
            pixel_shape=(gh * gw, per), grid=(1, gh, gw),
            start_id=int(config.vision_start_token_id), end_id=int(config.vision_end_token_id),
            mm_token_types=config.model_type == "qwen3_vl",
        )  # fmt: skip
    size = int(vis.image_size)
    pixels = (int(vis.num_channels), size, size)
    if config.model_type == "llava":
        side = size // int(vis.patch_size)
        return ImageBatch(
            images=request.images, tokens=side * side,
            image_token_id=int(config.image_token_id), vocab_size=vocab, pixel_shape=pixels,
        )  # fmt: skip
    if config.model_type == "gemma3":
        return ImageBatch(
            images=request.images, tokens=int(config.mm_tokens_per_image),
            image_token_id=int(config.image_token_id), vocab_size=vocab, pixel_shape=pixels,
            token_types=True,
        )  # fmt: skip
    if config.model_type == "mllama":
        from transformers.models.mllama.image_processing_pil_mllama import (
            get_all_supported_aspect_ratios,
            get_optimal_tiled_canvas,
        )

        tiles = int(vis.max_num_tiles)
        h, w = parse_image_size(request.image_size) if request.image_size else (size, size)
        ch, cw = (int(x) for x in get_optimal_tiled_canvas(h, w, tiles, size))
        grid = (ch // size, cw // size)
        return ImageBatch(
            images=request.images, tokens=1, image_token_id=int(config.image_token_id),
            vocab_size=vocab, pixel_shape=pixels, tiles=tiles, used_tiles=grid[0] * grid[1],
            aspect_id=get_all_supported_aspect_ratios(tiles).index(grid) + 1,
        )  # fmt: skip
    raise Unsupported(f"no image batch for {config.model_type!r}")


def build_setup(scenario: Scenario, device: Any, *, model: Any = None, base: Any = None) -> Setup:
    """Model, optimizer, scaler and step of a scenario on ``device`` (see module docstring).

    ``base``: the module whose ``loss_function`` and config count (default: ``model``'s base
    model; a wrapper such as FSDP1's ``FullyShardedDataParallel`` passes the wrapped one).
    """
    import torch  # noqa: TID251

    req = scenario.request
    if model is None:
        model = build_model(scenario, device)
    mp = str(req.mixed_precision.value)
    autocast_dtype = None if mp == "no" else torch_dtype(mp)
    scaler = None
    if mp == "fp16":
        scaler = torch.amp.GradScaler(torch.device(device).type)
    optimizer = build_optimizer(scenario, model)
    base = _base_model(model if base is None else base)
    setup = Setup(
        scenario=scenario,
        device=device,
        model=model,
        optimizer=optimizer,
        scaler=scaler,
        autocast_dtype=autocast_dtype,
        vocab_size=int(base.config.get_text_config().vocab_size),
        images=image_batch(req, base.config),
        encoder_decoder=bool(getattr(base.config, "is_encoder_decoder", False)),
        num_labels=int(base.config.num_labels)
        if "SequenceClassification" in type(base).__name__
        else 0,
    )
    if setup.num_labels:
        # the classification heads compute their loss inline (nn.CrossEntropyLoss), not
        # through loss_function: the loss phase starts when the head has produced the logits
        head = getattr(base, "classifier", None) or getattr(base, "score", None)
        if head is not None:
            head.register_forward_hook(lambda *_args: setup.on_phase("loss"))
        return setup
    if setup.encoder_decoder:
        # T5 computes its loss inline (nn.CrossEntropyLoss), not through loss_function: the
        # loss phase starts when the LM head has produced the logits
        base.get_output_embeddings().register_forward_hook(lambda *_args: setup.on_phase("loss"))
        return setup
    if type(base).__name__.endswith("ForMaskedLM") and "loss_function" not in inspect.getsource(
        type(base).forward
    ):
        # BERT/RoBERTa's masked-LM heads compute their loss inline (nn.CrossEntropyLoss): the
        # loss phase starts when the decoder has produced the logits
        base.get_output_embeddings().register_forward_hook(lambda *_args: setup.on_phase("loss"))
        return setup
    original = base.loss_function

    def loss_function(*args: Any, **kwargs: Any) -> Any:
        setup.on_phase("loss")
        return original(*args, **kwargs)

    base.loss_function = loss_function
    return setup
