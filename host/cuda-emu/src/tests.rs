//! The emulator against what CUDA defines: indices, barriers, shuffles, shared memory, and
//! the errors a wrong launch gets.

use super::*;

const SRC: &str = r#"
// Block sums: a warp shuffle reduction, then one value per warp through shared memory.
extern "C" __global__ void block_sum(const float* x, float* out, int n) {
    __shared__ float part[32];
    float v = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) v += x[i];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) s += part[w];
        out[blockIdx.x] = s;
    }
}
// Each thread writes where CUDA says it is.
extern "C" __global__ void where(unsigned int* out) {
    unsigned int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned int per = blockDim.x * blockDim.y * blockDim.z;
    out[b * per + t] = b * 1000 + t;
}
// Reverses each block's slice through dynamic shared memory; half the threads return early
// and the rest still pass the barrier.
extern "C" __global__ void reverse(const float* x, float* y, int n) {
    extern __shared__ float tile[];
    int i = threadIdx.x;
    tile[i] = x[blockIdx.x * n + i];
    __syncthreads();
    if (i >= n / 2) return;
    __syncthreads();
    y[blockIdx.x * n + i] = tile[n - 1 - i];
    y[blockIdx.x * n + n - 1 - i] = tile[i];
}
extern "C" __global__ void overrun(float* y, int n) {
    y[threadIdx.x] = 1.0f;
    if (threadIdx.x == 0) y[n] = 2.0f;
}
// Reads a neighbour's shared value with no barrier after the writes: a race.
extern "C" __global__ void racy(const float* x, float* y) {
    __shared__ float tile[64];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    tile[threadIdx.x] = x[i];
    y[i] = tile[(threadIdx.x + 1) % blockDim.x];
}
// 40 KiB of static shared memory, plus whatever dynamic memory the launch gives.
extern "C" __global__ void big_tile(float* y) {
    __shared__ float big[10240];
    extern __shared__ float more[];
    big[threadIdx.x] = 1.0f;
    more[threadIdx.x] = 2.0f;
    __syncthreads();
    y[threadIdx.x] = big[threadIdx.x] + more[threadIdx.x];
}
extern "C" __global__ void sums(float* acc, double* dacc) {
    atomicAdd(acc, 1.0f);
    atomicAdd(dacc, 0.5);
}
"#;

fn module() -> Module {
    Module::build(&[SRC]).unwrap()
}

#[test]
fn reductions_indices_shared_memory_and_early_returns_behave_as_on_a_gpu() {
    let m = module();
    assert_eq!(
        m.kernels(),
        [
            "big_tile",
            "block_sum",
            "overrun",
            "racy",
            "reverse",
            "sums",
            "where"
        ]
    );

    let x: Vec<f32> = (0..1000).map(|i| (i % 7) as f32).collect();
    let mut xb = Buf::from_slice(&x);
    let mut out = Buf::uninit::<f32>(3);
    m.launch(
        "block_sum",
        LaunchCfg::new((3, 1, 1), (128, 1, 1), 0),
        &mut [Arg::Buf(&mut xb), Arg::Buf(&mut out), Arg::I32(1000)],
    )
    .unwrap();
    let got: f32 = out.to_vec::<f32>().iter().sum();
    assert_eq!(got, x.iter().sum::<f32>());

    let (grid, block) = ((3, 2, 2), (4, 2, 3));
    let mut w = Buf::uninit::<u32>(12 * 24);
    m.launch(
        "where",
        LaunchCfg::new(grid, block, 0),
        &mut [Arg::Buf(&mut w)],
    )
    .unwrap();
    let want: Vec<u32> = (0..12u32)
        .flat_map(|b| (0..24u32).map(move |t| b * 1000 + t))
        .collect();
    assert_eq!(w.to_vec::<u32>(), want);

    let n = 64;
    let x: Vec<f32> = (0..2 * n).map(|i| i as f32).collect();
    let mut xb = Buf::from_slice(&x);
    let mut y = Buf::uninit::<f32>(2 * n);
    m.launch(
        "reverse",
        LaunchCfg::new((2, 1, 1), (n as u32, 1, 1), n * 4),
        &mut [Arg::Buf(&mut xb), Arg::Buf(&mut y), Arg::I32(n as i32)],
    )
    .unwrap();
    let want: Vec<f32> = x.chunks(n).flat_map(|c| c.iter().rev().copied()).collect();
    assert_eq!(y.to_vec::<f32>(), want);

    let mut acc = Buf::zeros::<f32>(1);
    let mut dacc = Buf::zeros::<f64>(1);
    m.launch(
        "sums",
        LaunchCfg::new((5, 1, 1), (64, 1, 1), 0),
        &mut [Arg::Buf(&mut acc), Arg::Buf(&mut dacc)],
    )
    .unwrap();
    assert_eq!(acc.to_vec::<f32>(), [320.0]);
    assert_eq!(dacc.to_vec::<f64>(), [160.0]);
}

#[test]
fn a_wrong_launch_is_refused_and_a_write_past_the_end_is_caught() {
    let m = module();
    let mut y = Buf::zeros::<f32>(32);
    let err = m
        .launch(
            "overrun",
            LaunchCfg::new((1, 1, 1), (32, 1, 1), 0),
            &mut [Arg::Buf(&mut y), Arg::I32(32)],
        )
        .unwrap_err();
    assert!(
        matches!(&err, EmuError::OutOfBounds { arg: 0, param, .. } if param == "y"),
        "{err}"
    );

    let mut y = Buf::zeros::<f32>(32);
    let err = m
        .launch(
            "overrun",
            LaunchCfg::new((1, 1, 1), (32, 1, 1), 0),
            &mut [Arg::Buf(&mut y), Arg::F32(32.0)],
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`int n`") && err.contains("needs I32, given F32"),
        "{err}"
    );
    let mut h = Buf::zeros::<u16>(32);
    let err = m
        .launch(
            "overrun",
            LaunchCfg::new((1, 1, 1), (32, 1, 1), 0),
            &mut [Arg::Buf(&mut h), Arg::I32(31)],
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`float* y`") && err.contains("4-byte elements"),
        "{err}"
    );
    let err = m
        .launch(
            "overrun",
            LaunchCfg::new((1, 1, 1), (2048, 1, 1), 0),
            &mut [Arg::Buf(&mut y), Arg::I32(31)],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("1..=1024"), "{err}");
    let mut x = Buf::zeros::<f32>(64);
    let err = m
        .launch(
            "reverse",
            LaunchCfg::new((1, 1, 1), (64, 1, 1), 64 * 1024),
            &mut [Arg::Buf(&mut x), Arg::Buf(&mut y), Arg::I32(64)],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("dynamic shared memory"), "{err}");
    assert!(matches!(
        m.launch("nope", LaunchCfg::new((1, 1, 1), (1, 1, 1), 0), &mut []),
        Err(EmuError::NoKernel(_))
    ));

    // Static and dynamic shared memory share the 48 KiB: 40 KiB + 4 KiB fits, 40 + 16 does not.
    let mut y = Buf::zeros::<f32>(32);
    m.launch(
        "big_tile",
        LaunchCfg::new((1, 1, 1), (32, 1, 1), 4096),
        &mut [Arg::Buf(&mut y)],
    )
    .unwrap();
    assert_eq!(y.to_vec::<f32>(), vec![3.0; 32]);
    let err = m
        .launch(
            "big_tile",
            LaunchCfg::new((1, 1, 1), (32, 1, 1), 16384),
            &mut [Arg::Buf(&mut y)],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("static and dynamic together"), "{err}");

    // A race between a block's threads is caught by running them in the other order too.
    let x: Vec<f32> = (0..128).map(|i| i as f32).collect();
    let err = m
        .launch(
            "racy",
            LaunchCfg::new((2, 1, 1), (64, 1, 1), 0),
            &mut [
                Arg::Buf(&mut Buf::from_slice(&x)),
                Arg::Buf(&mut Buf::zeros::<f32>(128)),
            ],
        )
        .unwrap_err();
    assert!(
        matches!(&err, EmuError::OrderDependent { arg: 1, param, .. } if param == "y"),
        "{err}"
    );

    let err =
        Module::build(&["extern \"C\" __global__ void k(float* y) { y[0] = undefined_name; }"])
            .err()
            .unwrap()
            .to_string();
    assert!(err.contains("undefined_name"), "{err}");
}

/// Half a warp at `__syncthreads`, the other half at `__syncwarp`: neither barrier can open.
const STUCK: &str = r#"
extern "C" __global__ void stuck() {
    if (threadIdx.x < 16) __syncthreads(); else __syncwarp();
}
"#;

#[test]
fn a_barrier_that_can_never_open_stops_the_process_with_a_message() {
    // The child: the launch never returns (the emulator aborts the process rather than hang).
    if std::env::var_os("GALLEY_EMU_STUCK_CHILD").is_some() {
        let m = Module::build(&[STUCK]).unwrap();
        let _ = m.launch("stuck", LaunchCfg::new((1, 1, 1), (32, 1, 1), 0), &mut []);
        unreachable!("a launch that can never finish returned");
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tests::a_barrier_that_can_never_open_stops_the_process_with_a_message",
            "--nocapture",
        ])
        .env("GALLEY_EMU_STUCK_CHILD", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the child finished: {err}");
    assert!(err.contains("can never pass a barrier"), "{err}");
}
