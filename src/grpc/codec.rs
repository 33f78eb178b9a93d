//! The protobuf codec every generated service and client uses (`build.rs` names it): prost's,
//! with smaller per-call buffers.
//!
//! Tonic allocates a call's encode and decode buffers up front, 8 KiB each by default, and
//! keeps them for the life of the call. A `Screen` stream lives as long as a phone call and
//! carries messages of a few hundred bytes, so those 16 KiB were most of what an idle stream
//! costs. The buffers still grow, in steps of [`BUFFER_BYTES`], for a larger message.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size (and growth step) of a call's encode and decode buffers: a segment, or a
/// verdict with an alert or two, fits without growing.
pub const BUFFER_BYTES: usize = 1024;

/// Tonic's default: a message this large is yielded to the runtime before the next is read.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Prost's codec with [`BUFFER_BYTES`] buffers.
#[derive(Debug, Clone, Copy)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD))
    }
}
