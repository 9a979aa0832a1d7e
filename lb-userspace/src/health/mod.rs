//! Health checks shared by the L4 VIPs, the L7 upstream pools and DNS GSLB pools.
