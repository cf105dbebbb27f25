"""Measuring a head: parameters, FLOPs (fvcore), activation memory and latency, at one standard setting.

Convention: **1 FLOP = 1 multiply-add**, as fvcore and the mmsegmentation model zoo count. fvcore's default
handles count convolutions, matrix products (matmul, einsum, bmm, linear), norms and resizes; here handles are
added for attention (``aten::scaled_dot_product_attention``), softmax and gathers (one per element written). Every
op still uncounted is reported, never hidden. Activation memory is measured on a training batch of two.
"""

import copy
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from fvcore.nn import FlopCountAnalysis, parameter_count
from fvcore.nn.jit_handles import get_shape
from torch.utils import benchmark

# ResNet-50-D8 features of one 512x512 image: C2..C5. With 21 VOC classes, the setting of every chapter.
STANDARD_SHAPES = ((1, 256, 128, 128), (1, 512, 64, 64), (1, 1024, 64, 64), (1, 2048, 64, 64))
STANDARD_CLASSES = 21
# The reference setting of the heads written for a plain ViT (SETR, DPT, Segmenter), whose levels are not C2..C5:
# four layers' tokens of a 512x512 image at patch 16, as (1, width, 32, 32) maps. ViT-B/16 (768 wide) for DPT and
# Segmenter, ViT-L/16 (1024) for SETR, as their mmsegmentation configs. A record profiled on them says so in its
# ``profiled["shapes"]`` (the list of shapes), where the others say "standard (D8)".
VIT_B16_SHAPES = ((1, 768, 32, 32),) * 4
VIT_L16_SHAPES = ((1, 1024, 32, 32),) * 4


@contextmanager
def shapes_printed(modules, width=10):
    """While the block runs, print what each of the named ``modules`` ({name: module}) returns: the shape walk."""
    def hook(name):
        def show(module, inputs, output):
            shape = [tuple(o.shape) for o in output] if isinstance(output, (list, tuple)) else tuple(output.shape)
            print(f"{name:{width}s} -> {shape}")
        return show

    hooks = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def standard_features(device="cpu", shapes=STANDARD_SHAPES, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=generator).to(device) for s in shapes]


def sdpa_flop(inputs, outputs):
    """softmax(q k^T) v: (b, h, L, d) x (b, h, S, d) -> L*S*d multiply-adds for q k^T and L*S*dv for the product."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    *batch, length, dim = q
    source, value_dim = k[-2], v[-1]
    return math.prod(batch) * length * source * (dim + value_dim)


def gather_flop(inputs, outputs):
    """A gather does no arithmetic; it is counted as one operation per element it writes, so that index-heavy
    heads (PSANet's mask crop) do not look free."""
    return math.prod(get_shape(outputs[0]))


def elementwise_flop(inputs, outputs):
    """One FLOP per element of the input, for the elementwise ops fvcore does not know: softmax (the exp; the sum and
    the division are folded in) and GELU (its erf counted as one operation)."""
    return math.prod(get_shape(inputs[0]))


EXTRA_HANDLES = {
    "aten::scaled_dot_product_attention": sdpa_flop,
    "aten::gelu": elementwise_flop,
    "aten::softmax": elementwise_flop,
    "aten::_softmax": elementwise_flop,
    "aten::gather": gather_flop,
    "aten::index": gather_flop,
    "aten::take_along_dim": gather_flop,
    "aten::feature_dropout": None,  # dropout is the identity at inference: no FLOPs
    "aten::dropout": None,
}


def count_parameters(module):
    return int(parameter_count(module)[""])


def check_parameters(module, by_hand, reference, what):
    """Print ``module``'s parameter count beside the count by hand and the reference implementation's, and stop
    (AssertionError) unless the three agree."""
    counted = count_parameters(module)
    print(f"{what} parameters: {counted:,} (by hand: {by_hand:,}; the reference: {reference:,})")
    if not counted == by_hand == reference:
        raise AssertionError(f"{what}: counted {counted:,}, by hand {by_hand:,}, reference {reference:,}: they must agree")


def conv_params(c_in, c_out, k=1, groups=1):
    """Parameters of a k x k convolution with a bias and no norm (for counting a head layer by layer)."""
    return c_in // groups * c_out * k * k + c_out


def conv_bn_params(c_in, c_out, k=1, groups=1):
    """Parameters of mmcv's ``ConvModule`` with BatchNorm: a k x k convolution without bias, then BatchNorm's weight
    and bias per channel (its running statistics are buffers, not parameters)."""
    return c_in // groups * c_out * k * k + 2 * c_out


def count_flops(module, inputs):
    """(total multiply-adds, by operator, uncounted operators with their call counts) for ``module(*inputs)``."""
    analysis = FlopCountAnalysis(module, inputs).set_op_handle(**EXTRA_HANDLES)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    total = int(analysis.total())
    return total, {k: int(v) for k, v in analysis.by_operator().items()}, dict(analysis.unsupported_ops())


def saved_bytes(fn, *inputs, skip=()):
    """Bytes of the tensors autograd saves for backward while ``fn(*inputs)`` runs, deduplicated by storage; the
    inputs themselves and the tensors of ``skip`` (e.g. parameters) are left out. Works for any callable: an
    attention block, a head."""
    skipped = {t.untyped_storage().data_ptr() for t in _tensors(list(inputs) + list(skip))}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skipped:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    del out
    return sum(seen.values())


def activation_bytes(module, inputs):
    """Bytes of the tensors autograd saves for backward during one training-mode forward pass.

    Device-independent: tensors are deduplicated by storage, and parameters and the inputs themselves are left
    out, so the number is the memory the module's own activations hold until backward. BatchNorm layers run with
    their running statistics while measuring: they save the same input tensor either way, and batch statistics
    are undefined for the 1x1 maps of pooling branches at a batch of one."""
    was_training = module.training
    module.train()
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    try:
        return saved_bytes(module, *inputs, skip=list(module.parameters()))
    finally:
        module.train(was_training)


def _tensors(inputs):
    for x in inputs:
        if isinstance(x, torch.Tensor):
            yield x
        elif isinstance(x, (list, tuple)):
            yield from _tensors(x)


def cuda_peak_bytes(module, inputs):
    """Peak CUDA memory of one forward+backward above what was allocated before (CUDA only)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    module.train()
    out = module(*inputs)
    out.float().sum().backward()
    module.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - start


def latency_ms(module, inputs, repeats=10):
    """Median wall time of an inference forward pass, in milliseconds, with torch.utils.benchmark (a warm-up pass,
    then the timer's own warm-up and ``repeats`` timed passes). ``repeats=1`` (ci mode) times one cold pass and
    nothing else: it checks that the code runs, it is not a measurement."""
    module.eval()
    with torch.no_grad():
        if repeats <= 1:
            start = time.perf_counter()
            module(*inputs)
            return (time.perf_counter() - start) * 1e3
        module(*inputs)  # warm-up
        timer = benchmark.Timer(stmt="module(*inputs)", globals={"module": module, "inputs": inputs},
                                num_threads=torch.get_num_threads())
        measurement = timer.timeit(repeats)
    return measurement.median * 1e3


@dataclass
class Profile:
    params: int
    flops: int
    activation_bytes: int
    latency_ms: float
    device: str
    uncounted: dict = field(default_factory=dict)
    flops_by_op: dict = field(default_factory=dict)
    cuda_peak_bytes: int | None = None
    activation_batch: int = 1  # the batch of the activation measurement (FLOPs and latency are per image)

    def as_dict(self):
        return asdict(self)

    def __str__(self):
        lines = [f"parameters       {self.params:,}",
                 f"FLOPs (MACs)     {self.flops / 1e9:.2f} G",
                 f"activations      {self.activation_bytes / 2**20:.1f} MiB saved for backward (batch {self.activation_batch})",
                 f"latency          {self.latency_ms:.1f} ms on {self.device}"]
        if self.cuda_peak_bytes is not None:
            lines.append(f"CUDA peak        {self.cuda_peak_bytes / 2**20:.1f} MiB forward+backward")
        lines.append("uncounted ops    " + (", ".join(f"{k} x{v}" for k, v in sorted(self.uncounted.items()))
                                          or "none"))
        return "\n".join(lines)


TRAIN_BATCH = 2  # activation memory is measured on a training batch of two images


def batched(inputs, batch):
    """``inputs`` with every tensor repeated ``batch`` times along its batch axis (lists of levels included)."""
    if isinstance(inputs, torch.Tensor):
        return torch.cat([inputs] * batch)
    return type(inputs)(batched(x, batch) for x in inputs)


def profile(module, inputs, device="cpu", repeats=10, train_batch=TRAIN_BATCH):
    """Profile ``module(*inputs)``: parameters, FLOPs and latency per input on ``device``, and the activation memory
    of a training forward pass on the inputs repeated to a batch of ``train_batch``."""
    module = module.to(device)
    inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) else [t.to(device) for t in x] for x in inputs)
    train_inputs = batched(inputs, train_batch)
    flops, by_op, uncounted = count_flops(module.eval(), inputs)
    peak = cuda_peak_bytes(module, train_inputs) if str(device).startswith("cuda") else None
    return Profile(params=count_parameters(module), flops=flops,
                   activation_bytes=activation_bytes(module, train_inputs), latency_ms=latency_ms(module, inputs, repeats),
                   device=str(device), uncounted=uncounted, flops_by_op=by_op, cuda_peak_bytes=peak,
                   activation_batch=train_batch)


def profile_head(head, device="cpu", repeats=10):
    """Profile a decode head at the standard setting: ResNet-50-D8 features of a 512x512 image, 21 classes. FLOPs
    and latency are per image; activation memory is that of a training batch of two (``TRAIN_BATCH``)."""
    return profile(head, (standard_features(device),), device, repeats)


def trained_profile(head, features):
    """The head as it was trained, on the features it was trained on: parameters, FLOPs per image (``features``:
    the levels of one image at the protocol's size) and the activation memory of a training batch of two. No
    latency: ``python -m seglab.book.bench`` times every head side by side, in one process. A dict, for records."""
    head = copy.deepcopy(head).cpu()  # profiled apart from the run, which stays on its device and in eval mode
    features = [f[:1].detach().float().cpu() for f in features]
    flops, by_op, uncounted = count_flops(head.eval(), (features,))
    return {"params": count_parameters(head), "flops": flops, "flops_by_op": by_op, "uncounted": uncounted,
            "activation_bytes": activation_bytes(head, (batched(features, TRAIN_BATCH),)),
            "activation_batch": TRAIN_BATCH, "input_shapes": [list(f.shape) for f in features]}
