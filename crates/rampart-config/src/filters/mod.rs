//! The config side of filters: how a filter entry's opaque config is checked, and the
//! data types (with their validation) of the built-in filters.
//!
//! A chain entry is `- <name>: <config>`. This crate keeps `<config>` as JSON
//! (`model::FilterConfig`); the filter's factory in the data plane parses it into
//! its own type with [`typed`] and checks it. A [`FilterCatalog`] (the data plane's filter
//! registry) lets [`crate::validate_with`] report filter errors together with every other
//! error, each with its full field path.

pub mod cors;
pub mod header_mutation;
pub mod rate_limit;

pub use crate::check::{FilterCatalog, NoConfig, parse_with, typed};
