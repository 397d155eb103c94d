//! Outpost patch: TLS through a current rustls (0.23, the caller's `ServerConfig` and crypto
//! provider) instead of upstream's OpenSSL or rustls 0.20 back ends.

#[cfg(feature = "ssl-rustls")]
pub(crate) mod rustls;
#[cfg(feature = "ssl-rustls")]
pub(crate) use self::rustls::RustlsStream as SslStream;
#[cfg(feature = "ssl-rustls")]
pub use self::rustls::TlsConfig;
