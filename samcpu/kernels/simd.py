"""Two things numba's own code does not give: a SIMD kernel (queries against int16 rows laid
out in blocks of ``LANES`` rows, transposed) and a prefetch.

A block holds ``LANES`` rows as ``codes[blk, j, lane]`` (W x LANES int16): value j of every row
of the block is one contiguous ``LANES``-vector, so a query's dot products with the whole
block are W vector multiply-adds into one register, with no horizontal sums. Written as a
numba ``@intrinsic`` emitting LLVM vector IR (``<16 x float>``; LLVM splits it into two 8-wide
halves where the CPU has no 512-bit registers). Plain numba loops over the same layout
compiled to scalar code here (3-10x slower than this).

The int16 copy is half the size of a float32 one, which matters as much as the layout: a
query's pass over hot tiers of 8,192 rows per batch element streams 8 MB of float32 over 8
elements, more than the cores' L2. Per batch element at 8,192 rows, W = 32, 4 heads, 8
elements in turn (scratch measurements beside a training run on the other core, so rough):
100 us for the row-major float32 loop numba compiles, 62 us for this kernel on float32, 35 us
on int16, 22 us on int8 (whose error bound, about 0.005, left hundreds of near-ties to re-score
exactly on an untrained model's memory; int16's is about 2e-5).
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

#: rows per block (the vector width in float32 lanes)
LANES = 16
#: blocks per call: independent accumulator chains, to hide the multiply-add latency
GROUP = 2
#: query rows per call (the caller pads its queries with zero rows to a multiple)
HEADS = 4


@intrinsic
def score_blocks(typingctx, codes, blk0, scale, slack, queries, h0, out, top):
    """Scores of queries ``h0 .. h0 + HEADS - 1`` against blocks ``blk0 .. blk0 + GROUP - 1``.

    codes (nblk, W, LANES) int16 C; scale, slack (nblk * LANES,) float32; queries (Hp, W)
    float32 C; out (Hp, >= GROUP * LANES) float32 C; top (Hp, >= GROUP) float32 C. For each
    head h, block blk = blk0 + g and row i = blk * LANES + lane:
    ``out[h, g * LANES + lane] = scale[i] * sum_j queries[h, j] * codes[blk, j, lane]``
    (float32) and ``top[h, g] = max over the block's lanes of out[h, .] + slack[i]`` (float32).
    No bounds are checked: the caller keeps every index in range.
    """
    def array(t, dtypes, ndim):
        return isinstance(t, types.Array) and t.dtype in dtypes and t.ndim == ndim and t.layout == "C"

    f32 = (types.float32,)
    if not (array(codes, (types.int16,), 3) and all(array(t, f32, 1) for t in (scale, slack))
            and all(array(t, f32, 2) for t in (queries, out, top))
            and all(isinstance(t, types.Integer) for t in (blk0, h0))):
        raise TypingError("score_blocks takes codes (nblk, W, LANES) int16, scale and slack (n,) "
                          "float32, queries, out and top 2-d float32, all C-contiguous, and integer blk0, h0")
    sig = types.void(codes, blk0, scale, slack, queries, h0, out, top)

    def codegen(context, builder, signature, args):
        codes_v, blk_v, scale_v, slack_v, q_v, h_v, out_v, top_v = args
        f32, i64, i32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
        vec, ints = ir.VectorType(f32, LANES), ir.VectorType(ir.IntType(16), LANES)

        def const(v):
            return ir.Constant(i64, v)

        def proxy(i, value):
            return cgutils.create_struct_proxy(signature.args[i])(context, builder, value)

        ca, sa, la, qa, oa, ta = (proxy(i, v) for i, v in ((0, codes_v), (2, scale_v), (3, slack_v),
                                                           (4, q_v), (6, out_v), (7, top_v)))
        width = builder.extract_value(ca.shape, 1)
        out_cols = builder.extract_value(oa.shape, 1)
        top_cols = builder.extract_value(ta.shape, 1)
        fmuladd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                                                 "llvm.fmuladd.v16f32")
        vmax = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [vec]),
                                              "llvm.vector.reduce.fmax.v16f32")
        blocks = [builder.add(blk_v, const(g)) for g in range(GROUP)]
        stride = builder.mul(width, const(LANES))
        bases = [builder.gep(ca.data, [builder.mul(blk, stride)]) for blk in blocks]
        qrows = [builder.gep(qa.data, [builder.mul(builder.add(h_v, const(h)), width)]) for h in range(HEADS)]
        zero = ir.Constant(vec, [0.0] * LANES)
        acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(GROUP)] for _ in range(HEADS)]
        splat = ir.Constant(ir.VectorType(i32, LANES), [0] * LANES)
        undef = ir.Constant(vec, ir.Undefined)
        with cgutils.for_range(builder, width) as loop:
            off = builder.mul(loop.index, const(LANES))
            vals = [builder.sitofp(builder.load(builder.bitcast(builder.gep(base, [off]), ints.as_pointer()),
                                                align=2), vec) for base in bases]
            for h in range(HEADS):
                q = builder.load(builder.gep(qrows[h], [loop.index]))
                qv = builder.shuffle_vector(builder.insert_element(undef, q, ir.Constant(i32, 0)), undef,
                                            splat)
                for g in range(GROUP):
                    builder.store(builder.call(fmuladd, [qv, vals[g], builder.load(acc[h][g])]), acc[h][g])

        def vector_at(ptr, index):
            return builder.bitcast(builder.gep(ptr, [index]), vec.as_pointer())

        for g, blk in enumerate(blocks):
            first = builder.mul(blk, const(LANES))
            sc = builder.load(vector_at(sa.data, first), align=4)
            sl = builder.load(vector_at(la.data, first), align=4)
            for h in range(HEADS):
                head = builder.add(h_v, const(h))
                s = builder.fmul(builder.load(acc[h][g]), sc)
                place = builder.add(builder.mul(head, out_cols), const(g * LANES))
                builder.store(s, vector_at(oa.data, place), align=4)
                builder.store(builder.call(vmax, [builder.fadd(s, sl)]),
                              builder.gep(ta.data, [builder.add(builder.mul(head, top_cols), const(g))]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def prefetch_row(typingctx, array, row):
    """Ask the CPU to start loading the first two cache lines of ``array[row]`` (a 2-d C array)
    now (``llvm.prefetch``; a hint, never a fault): the rows an index proposes are scattered
    over the memory, and loading many at once hides the latency of each."""
    if not (isinstance(array, types.Array) and array.ndim == 2 and isinstance(row, types.Integer)):
        raise TypingError("prefetch_row takes a 2-d array and an integer row")
    sig = types.void(array, row)

    def codegen(context, builder, signature, args):
        arr = cgutils.create_struct_proxy(signature.args[0])(context, builder, args[0])
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        stride = builder.extract_value(arr.strides, 0)
        start = builder.gep(builder.bitcast(arr.data, i8p), [builder.mul(args[1], stride)])
        kind = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fetch = cgutils.get_or_insert_function(builder.module, kind, "llvm.prefetch.p0i8")
        for line in (0, 64):
            builder.call(fetch, [builder.gep(start, [ir.Constant(ir.IntType(64), line)]), ir.Constant(i32, 0),
                                 ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen
