//! Parameters: ONE table of (checkpoint name, shape, init) from which come the arena size, the
//! named views, the init and the safetensors names (fla's names, fla.md 2.4), so they can't drift.
//! Each module of a model adds its own rows through [`Table`] (gla-model's mixers and MLP; its
//! `Layout::new` walks the model in arena order).
//!
//! Weights are stored as PyTorch does: a linear layer's weight is `[out, in]` row-major and
//! computes `y = x W^T`.

/// Index of a tensor in a parameter table (a model's list of [`ParamSpec`]).
pub type ParamId = usize;

/// How a tensor is initialised (fla's `_init_weights`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// `N(0, initializer_range)`: linear, conv and embedding weights.
    Normal,
    /// Zeros: biases.
    Zeros,
    /// Ones: norm weights.
    Ones,
    /// `log(U(lo, hi))`: Gated DeltaNet's `A_log` (`A ~ U(0, 16)`, fla's layer init).
    LogUniform {
        /// Lower end of the uniform.
        lo: f32,
        /// Upper end of the uniform.
        hi: f32,
    },
    /// `U(-bound, bound)`: PyTorch's default `Conv2d` init (`bound = 1/sqrt(fan_in)`) and
    /// `xavier_uniform_` (`bound = gain sqrt(6 / (fan_in + fan_out))`), hustvl's ViG.
    Uniform {
        /// Half-width of the interval.
        bound: f32,
    },
    /// The inverse softplus of `dt = exp(U(ln min, ln max))` clamped to `>= floor`, i.e.
    /// `dt + log(-expm1(-dt))`: Gated DeltaNet's `dt_bias` (fla's layer init, Mamba's).
    InvSoftplusDt {
        /// Smallest dt (before the floor).
        min: f32,
        /// Largest dt.
        max: f32,
        /// Lower clamp of dt.
        floor: f32,
    },
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// fla's checkpoint name, e.g. `model.layers.0.attn.q_proj.weight`.
    pub name: String,
    /// PyTorch shape.
    pub shape: Vec<usize>,
    /// Init rule.
    pub init: Init,
    /// Offset in the arena.
    pub offset: usize,
    /// A linear layer's weight, read only as a GEMM operand.
    pub gemm: bool,
}

impl ParamSpec {
    /// Element count.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The arena range.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.numel()
    }
}

/// The table being built: each module adds its rows in arena order through [`Table::add`].
#[derive(Debug, Default)]
pub struct Table {
    specs: Vec<ParamSpec>,
    offset: usize,
}

impl Table {
    /// Appends a tensor read by the ops of its module (norm weights, biases, conv taps); returns
    /// its index.
    pub fn add(&mut self, name: String, shape: Vec<usize>, init: Init) -> ParamId {
        self.push(name, shape, init, false)
    }

    /// Appends a linear layer's weight, read only as a GEMM operand (a device may keep only a
    /// low-precision copy of it for inference).
    pub fn add_gemm(&mut self, name: String, shape: Vec<usize>) -> ParamId {
        self.push(name, shape, Init::Normal, true)
    }

    /// [`Table::add_gemm`] with another init rule than `Init::Normal`.
    pub fn add_gemm_init(&mut self, name: String, shape: Vec<usize>, init: Init) -> ParamId {
        self.push(name, shape, init, true)
    }

    /// The rows added so far and the arena length.
    pub fn finish(self) -> (Vec<ParamSpec>, usize) {
        (self.specs, self.offset)
    }

    fn push(&mut self, name: String, shape: Vec<usize>, init: Init, gemm: bool) -> ParamId {
        let s = ParamSpec { name, shape, init, offset: self.offset, gemm };
        self.offset += s.numel();
        self.specs.push(s);
        self.specs.len() - 1
    }
}
