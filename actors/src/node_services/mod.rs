//! The services of a node (see [`crate::ext::service`]), and the one list
//! that builds them from the configuration.
//!
//! Adding a service is: its file here, implementing
//! [`Service`](crate::ext::Service); its section in [`ServicesConfig`]
//! (which the node's configuration fills from `[[listen.*]]` or
//! `[services.*]`); and one line in [`build`].

pub mod component;
pub mod s2s;

use std::sync::Arc;

use crate::ext::Service;

/// Every service's configuration, as the node's configuration gives it.
#[derive(Clone, Debug, Default)]
pub struct ServicesConfig {
    /// `[[listen.component]]`: one XEP-0114 listener each.
    pub component: Vec<component::ComponentListen>,
    /// `[[listen.s2s]]` and `[s2s]`: federation, when there is a listener
    /// (remote servers verify our dialback keys through it).
    pub s2s: s2s::S2sConfig,
}

/// The configured services, in start order; an error names the section.
pub fn build(cfg: &ServicesConfig) -> Result<Vec<Arc<dyn Service>>, String> {
    let mut services: Vec<Arc<dyn Service>> = Vec::new();
    let components = component::Components::default();
    for (i, l) in cfg.component.iter().enumerate() {
        services.push(component::ComponentListener::build(format!("listen.component[{i}]"), l.clone(), &components)?);
    }
    if !cfg.s2s.listen.is_empty() {
        services.push(s2s::S2s::build(cfg.s2s.clone())?);
    }
    Ok(services)
}
