//! What a job sees of the test bed's GPU-like device nodes (/dev/nvidia0,
//! /dev/nvidia1, /dev/nvidiactl: NVIDIA's numbers, no driver behind them),
//! shared by the Slurm, LSF and hostile suites.
//!
//! For each node the script prints `GPU<n>=absent|enxio|eperm|other`: a
//! node the device cgroup lets through opens with ENXIO (there is no
//! driver), one it denies with EPERM; then berth's GPU variables,
//! `CUDA=<value or unset>` and `NV=<value or unset>`. It holds no single
//! quote: Slurm 23.02+ quotes `%@`'s arguments in '…' without escaping
//! (wrapper/slurm/README.md).

pub const GPU_PROBE: &str = "for n in 0 1 ctl; do \
    if [ ! -e /dev/nvidia$n ]; then r=absent; \
    else m=$(head -c1 /dev/nvidia$n 2>&1); case $m in \
      *\"No such device or address\"*) r=enxio;; *\"not permitted\"*) r=eperm;; *) r=other;; esac; fi; \
    echo GPU$n=$r; done; \
    echo CUDA=${CUDA_VISIBLE_DEVICES-unset}; echo NV=${NVIDIA_VISIBLE_DEVICES-unset}";
