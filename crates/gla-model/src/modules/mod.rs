//! Modules shared by every model, whatever its token mixers: the SwiGLU MLP ([`mlp`]). The
//! embedding, the RMSNorms and the lm_head are single primitive calls
//! ([`crate::backend::Primitives`]) made by the model itself.

pub mod mlp;
