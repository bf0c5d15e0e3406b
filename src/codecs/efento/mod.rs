//! Efento NB-IoT codec (filled by the codec work).
