// KROUTES-PENDING: temporary until dataplane::kernel lands.
pub struct Mirror;
impl Mirror {
    pub fn apply(&mut self, _: &[braid_dataplane::Prefix], _: &[braid_dataplane::Prefix]) {}
    pub fn remove_all(&mut self) {}
}
