//! The entries of an implementation-2 kernel outside Keras's connectivity mask
//! (keras-lc-semantics §2.3): which flat indices of the Keras tensor they are, and how to
//! take them out of a Keras tensor and put them back.
//!
//! Keras keeps these entries as part of its variable (initialized, saved, regularized and
//! constrained) although `kernel * mask` never lets them reach the output, so lcjit keeps
//! them beside the canonical kernel, never in it. Their order is the row-major order of
//! the Keras tensor; an entry `(ip, c, p, f)` (channels_last, flat
//! `((ip·C + c)·P + p)·F + f`) or `(c, ip, f, p)` (channels_first, flat
//! `((c·N + ip)·F + f)·P + p`) is off the mask exactly when input position `ip` is not in
//! the window of output position `p`. For any implementation other than 2 there are none.

use super::LcGeometry;
use crate::graph::ops::DataFormat;

impl LcGeometry {
    /// Number of Keras kernel entries outside the connectivity mask: for implementation 2
    /// the Keras kernel size minus the connected entries ([`LcGeometry::nnz`]); 0 for
    /// implementations 1 and 3, whose kernels hold connected weights only.
    pub fn off_mask_len(&self) -> usize {
        if self.implementation != 2 {
            return 0;
        }
        let total = self
            .input_positions()
            .saturating_mul(self.c)
            .saturating_mul(self.positions())
            .saturating_mul(self.f);
        total.saturating_sub(self.nnz())
    }

    /// Calls `visit` with the flat Keras index of every off-mask entry, ascending.
    fn for_each_off_mask(&self, mut visit: impl FnMut(usize)) {
        if self.implementation != 2 {
            return;
        }
        let mask = self.connectivity_mask();
        let (n_n, p_n, c_n, f_n) = (self.input_positions(), self.positions(), self.c, self.f);
        match self.data_format {
            DataFormat::ChannelsLast => {
                for ip in 0..n_n {
                    let row = &mask[ip * p_n..(ip + 1) * p_n];
                    for c in 0..c_n {
                        for (p, &m) in row.iter().enumerate() {
                            if m == 0.0 {
                                let base = ((ip * c_n + c) * p_n + p) * f_n;
                                (base..base + f_n).for_each(&mut visit);
                            }
                        }
                    }
                }
            }
            DataFormat::ChannelsFirst => {
                for c in 0..c_n {
                    for ip in 0..n_n {
                        let row = &mask[ip * p_n..(ip + 1) * p_n];
                        for f in 0..f_n {
                            let base = ((c * n_n + ip) * f_n + f) * p_n;
                            for (p, &m) in row.iter().enumerate() {
                                if m == 0.0 {
                                    visit(base + p);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The off-mask entries of a Keras-layout kernel (row-major data of shape
    /// [`LcGeometry::keras_kernel_shape`]), in row-major order; empty unless
    /// implementation 2.
    pub fn split_off_mask(&self, keras: &[f32]) -> Result<Vec<f32>, String> {
        Self::check_len("Keras kernel", keras, &self.keras_kernel_shape()?)?;
        let mut out = Vec::with_capacity(self.off_mask_len());
        self.for_each_off_mask(|i| out.push(keras[i]));
        Ok(out)
    }

    /// Writes `off` (as [`LcGeometry::split_off_mask`] returns it) into the off-mask
    /// entries of a Keras-layout kernel; connected entries are left alone.
    pub fn merge_off_mask(&self, keras: &mut [f32], off: &[f32]) -> Result<(), String> {
        Self::check_len("Keras kernel", keras, &self.keras_kernel_shape()?)?;
        if off.len() != self.off_mask_len() {
            return Err(format!(
                "{} off-mask entries given, the kernel has {}",
                off.len(),
                self.off_mask_len()
            ));
        }
        let mut k = 0;
        self.for_each_off_mask(|i| {
            keras[i] = off[k];
            k += 1;
        });
        Ok(())
    }
}
