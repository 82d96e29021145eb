# The layers of lib/, bottom first: each folder is one library and may use only the folders listed
# after its name (and itself). lib/CMakeLists.txt links each library to exactly these, and
# check_layers.cmake refuses an #include of any other folder, so an upward or circular arrow is a
# build error. The one home of this fact.
set(MOE_LAYERS core config ops moe model dist train infer report bench)
set(MOE_LAYER_DEPS_core "")
set(MOE_LAYER_DEPS_config core)
set(MOE_LAYER_DEPS_ops core)
set(MOE_LAYER_DEPS_moe core config ops)
set(MOE_LAYER_DEPS_model core config ops moe)
set(MOE_LAYER_DEPS_dist core config ops moe model)
set(MOE_LAYER_DEPS_train core config ops moe model dist)
set(MOE_LAYER_DEPS_infer core config ops moe model)
set(MOE_LAYER_DEPS_report core config ops moe model dist train infer)
set(MOE_LAYER_DEPS_bench core config ops moe model dist train infer)
