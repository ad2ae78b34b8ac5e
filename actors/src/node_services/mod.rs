//! The services of a node (see [`crate::ext::service`]), and the one list
//! that builds them from the configuration.
//!
//! Adding a service is: its file here, implementing
//! [`Service`](crate::ext::Service); its section in [`ServicesConfig`]
//! (which the node's configuration fills from `[[listen.*]]` or
//! `[services.*]`); and one line in [`build`].

pub mod component;

use std::sync::Arc;

use crate::ext::Service;

/// Every service's configuration, as the node's configuration gives it.
#[derive(Clone, Debug, Default)]
pub struct ServicesConfig {
    /// `[[listen.component]]`: one XEP-0114 listener each.
    pub component: Vec<component::ComponentListen>,
}

/// The configured services, in start order; an error names the section.
pub fn build(cfg: &ServicesConfig) -> Result<Vec<Arc<dyn Service>>, String> {
    let mut services: Vec<Arc<dyn Service>> = Vec::new();
    let components = component::Components::default();
    for (i, l) in cfg.component.iter().enumerate() {
        services.push(component::ComponentListener::build(format!("listen.component[{i}]"), l.clone(), &components)?);
    }
    Ok(services)
}
